"""gengate's gRPC service: the Generate RPC over llama-cpp-python."""
