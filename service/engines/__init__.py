"""Inference: the engine interface (base.py), the pool of loaded models (pool.py), and the engines over llama.cpp:
its shared parts (llama.py), the batch scheduler (batch.py), embedding models (embedding.py), vision projectors
(vision.py), and sampling under a grammar in a worker process (grammar_sampler.py)."""
