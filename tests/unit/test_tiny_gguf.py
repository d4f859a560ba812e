"""Checks for the tiny random-weight GGUF test model (tests/tiny_gguf.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")
pytest.importorskip("gguf")

from tests import tiny_gguf

PROMPTS = ["hello", "Why is the sky blue?", "héllo 世界 🙂"]


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    return tiny_gguf.write_tiny_llama(
        tmp_path_factory.mktemp("tiny") / "tiny.gguf",
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
        extra_metadata={"gengate.test": "yes", "gengate.answer": 42},
    )


@pytest.fixture(scope="module")
def llm(tiny_model_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(tiny_model_path), n_ctx=512, verbose=False)


def test_file_is_small_and_deterministic(tmp_path, tiny_model_path):
    a = tiny_gguf.write_tiny_llama(tmp_path / "a.gguf", seed=3)
    b = tiny_gguf.write_tiny_llama(tmp_path / "b.gguf", seed=3)
    c = tiny_gguf.write_tiny_llama(tmp_path / "c.gguf", seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert tiny_model_path.stat().st_size < 2 * 1024 * 1024


def test_metadata(llm):
    md = llm.metadata
    assert md["general.architecture"] == "llama"
    assert md["general.name"] == tiny_gguf.TINY_MODEL_NAME
    assert md["tokenizer.chat_template"].startswith("{% for m in messages %}")
    assert md["gengate.test"] == "yes"
    assert md["gengate.answer"] == "42"
    assert llm.n_vocab() == tiny_gguf.TINY_N_VOCAB
    assert llm.token_eos() == tiny_gguf.TINY_EOS_ID
    assert llm.token_bos() == tiny_gguf.TINY_BOS_ID


@pytest.mark.parametrize(
    "text", ["héllo 世界 🙂", "hello", "Why is the sky blue?", "a\tb\n\n  c \x00 ✓🚀日本語"]
)
def test_tokenize_roundtrip(llm, text):
    data = text.encode("utf-8")
    tokens = llm.tokenize(data, add_bos=False)
    assert tokens
    assert llm.detokenize(tokens) == data
    # with BOS the round trip holds as well
    tokens = llm.tokenize(data, add_bos=True)
    assert tokens[0] == tiny_gguf.TINY_BOS_ID
    assert llm.detokenize(tokens) == data


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_300_tokens_without_eos(llm, prompt):
    llm.reset()
    out = []
    for tok in llm.generate(llm.tokenize(prompt.encode("utf-8")), temp=0.0, top_k=1):
        out.append(tok)
        if tok == llm.token_eos() or len(out) >= 300:
            break
    assert len(out) == 300
    assert llm.token_eos() not in out
    text = llm.detokenize(out).decode("utf-8")  # valid UTF-8
    assert text.strip()


def test_completion_hits_length_not_stop(llm):
    res = llm.create_completion("hello", max_tokens=300, temperature=1.0, seed=7)
    choice = res["choices"][0]
    assert choice["finish_reason"] == "length"
    assert res["usage"]["completion_tokens"] == 300
    assert choice["text"].strip()
