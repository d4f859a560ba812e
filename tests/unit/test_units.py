"""Pure pieces: model names, Go durations and quoting, detokenizer, thinking parser, GGUF metadata."""
from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import names
from common.golang import parse_duration, quote
from service.chat.thinking import ThinkingParser, thinking_tags
from service.engines.detokenizer import Detokenizer
from service.models import tokenizer
from service.models.gguf import GGUFError, read_metadata
from tests.tiny_gguf import write_tiny_llama


@pytest.mark.parametrize("text", ["h/n/m:t", "host/namespace/model:tag", "_why/_the/_lucky:_stiff",
                                  "host:https/namespace/model:tag", "a" * 80, "h" * 350 + "/n/m", "xx",
                                  "https://host/ns/m:t"])
def test_valid_names(text):
    names.parse(text)


@pytest.mark.parametrize("text", ["", "^", "mm:", "/nn/mm", "//", "//mm", "hh//", "@", "m@d", "00@", "-hh/nn/mm:tt",
                                  "hh/-nn/mm:tt", "hh/nn/-mm:tt", "hh/nn/mm:-tt", "host/name:space/model:tag",
                                  "a" * 81, "h" * 351 + "/n/m", "a/b/c/d", "ns.x/m", "../../etc/passwd", "a b"])
def test_invalid_names(text):
    with pytest.raises(names.InvalidName):
        names.parse(text)


def test_name_defaults():
    name = names.parse("xx")
    assert str(name) == "registry.ollama.ai/library/xx:latest" and name.short == "xx:latest"
    assert names.parse("XX:Latest").key == name.key


@pytest.mark.parametrize("text,ns", [("5m", 300 * 10**9), ("1h30m", 5400 * 10**9), ("300ms", 3 * 10**8), ("0", 0),
                                     ("-1m", -60 * 10**9), ("1.5s", 15 * 10**8), ("2h45m10.5s", 9910500000000),
                                     ("1µs", 1000), ("+3ns", 3)])
def test_go_durations(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text,error", [("abc", 'time: invalid duration "abc"'), ("", 'time: invalid duration ""'),
                                        ("10", 'time: missing unit in duration "10"'), ("-1", 'time: missing unit in duration "-1"'),
                                        ("3x", 'time: unknown unit "x" in duration "3x"')])
def test_go_duration_errors(text, error):
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(") + "$"):
        parse_duration(text)


def test_go_quote():
    assert quote('"xml"') == '"\\"xml\\""' and quote("a\nb\x00") == '"a\\nb\\x00"' and quote("é") == '"é"'


def test_detokenizer_holds_back_split_utf8_and_stop_prefixes():
    d = Detokenizer(["</s>", "STOP"])
    out = [d.feed(b) for b in [b"Hel", b"lo \xf0\x9f", b"\x99\x82 S", b"TO", b"X <", b"/s", b"> more"]]
    assert out == ["Hel", "lo ", "🙂 ", "", "STOX ", "", ""] and d.stopped and d.flush() == ""


def test_detokenizer_flushes_what_it_held():
    d = Detokenizer(["STOP"])
    assert d.feed(b"abc ST") == "abc " and d.flush() == "ST" and not d.stopped
    d = Detokenizer()
    assert d.feed(b"\xe4\xb8") == "" and d.feed(b"\x96") == "世" and d.feed(b"\xff") == "\ufffd"


def test_thinking_parser():
    p = ThinkingParser("<think>", "</think>")
    parts = [p.feed(x) for x in ["<th", "ink>Let me", " think</th", "ink>", "\n\nThe answer", " is 4"]]
    assert "".join(t for t, _ in parts) == "Let me think" and "".join(r for _, r in parts) == "The answer is 4"
    p = ThinkingParser("<think>", "</think>")
    assert p.feed("Hello") == ("", "Hello") and p.flush() == ("", "")
    p = ThinkingParser("<think>", "</think>", starts_inside=True)
    assert p.feed("hmm </think>ok") == ("hmm ", "ok")
    p = ThinkingParser("<think>", "</think>", starts_inside=True)
    assert p.feed("unfinished </thi") == ("unfinished ", "") and p.flush() == ("</thi", "")
    assert thinking_tags("x <think> y </think>") == ("<think>", "</think>") and thinking_tags("plain") is None


def test_a_draft_needs_the_models_tokenizer_as_llama_cpp_checks_it(tmp_path):
    """What a draft model must share with its model (service.models.tokenizer): not the chat templates or the
    weights; the kind, special ids and token texts, sizes at most 128 apart."""
    a = tokenizer.read(write_tiny_llama(tmp_path / "a.gguf"))
    b = tokenizer.read(write_tiny_llama(tmp_path / "b.gguf", chat_template="{{ x }}", f16=True,
                                        extra_metadata={"tokenizer.chat_template.tool_use": "{{ y }}"}))
    assert len(a.tokens) > 256 and tokenizer.difference(a, b) is None
    eos = tokenizer.read(write_tiny_llama(tmp_path / "c.gguf", extra_metadata={"tokenizer.ggml.eos_token_id": 1}))
    assert tokenizer.difference(a, eos) == "the draft model's vocabulary differs from the model's: EOS 1 against 2"
    padded = dataclasses.replace(a, tokens=a.tokens + ("<pad>",) * 128)
    assert tokenizer.difference(padded, a) is None and tokenizer.difference(a, padded) is None
    assert "tokens against" in tokenizer.difference(a, dataclasses.replace(a, tokens=a.tokens + ("x",) * 129))
    other = dataclasses.replace(a, tokens=a.tokens[:300] + ("other",) + a.tokens[301:])
    assert tokenizer.difference(a, other).endswith("token 300 is 'other', not " + repr(a.tokens[300]))
    assert tokenizer.difference(a, dataclasses.replace(a, tokens=("x",) * 5 + a.tokens[5:])) is None
    data = bytearray((tmp_path / "a.gguf").read_bytes())
    at = data.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 4      # the array's item type
    data[at + 4:at + 12] = (1 << 40).to_bytes(8, "little")                            # a count past the file
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError):
        tokenizer.read(tmp_path / "bad.gguf")


def test_gguf_metadata(tmp_path):
    meta = read_metadata(write_tiny_llama(tmp_path / "t.gguf", chat_template="{{ x }}"))
    assert meta["general.architecture"] == "llama" and meta["tokenizer.chat_template"] == "{{ x }}"
    assert meta["llama.context_length"] == 512 and meta["tokenizer.ggml.tokens"]["array_length"] > 256
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(GGUFError):
        read_metadata(tmp_path / "bad.gguf")


def test_negative_fractional_keep_alive_is_a_valid_duration():
    """google.protobuf.Duration needs seconds and nanos of one sign (other languages' runtimes check it)."""
    from gateway.ollama import wire
    req = wire.generate_request(b'{"model": "m", "keep_alive": -1.5}')
    assert (req.keep_alive.seconds, req.keep_alive.nanos) == (-1, -500_000_000)
    assert wire.generate_request(b'{"model": "m", "keep_alive": "-90s"}').keep_alive.ToNanoseconds() == -90 * 10**9


def test_go_quote_escapes_every_control_character_as_go_does():
    # strconv.Quote("\a\b\f\v\x7f\u00a0\U0001F600") in Go 1.19.
    assert quote("\a\b\f\v\x7f\u00a0😀") == '"\\a\\b\\f\\v\\x7f\\u00a0😀"'
    assert quote("é", ascii_only=True) == '"\\u00e9"'


def _naive_detokenize(pieces: list[str], stops: list[str]) -> str:
    """What a stop-sequence search over the whole text gives: the text up to the first stop to complete."""
    text = ""
    for piece in pieces:
        for ch in piece:
            text += ch
            for stop in stops:
                if stop and text.endswith(stop):
                    return text[:-len(stop)]
    return text


@given(pieces=st.lists(st.text(alphabet="ab\n", max_size=4), max_size=30),
       stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=5), max_size=4))
def test_detokenizer_matches_a_whole_text_search(pieces, stops):
    d = Detokenizer(stops)
    out = "".join(d.feed(p.encode()) for p in pieces) + d.flush()
    assert out == _naive_detokenize(pieces, stops)


def test_long_stop_sequences_cost_each_token_its_own_characters():
    # 32 stop sequences of 1024 characters that the output keeps almost matching: a quadratic search per token
    # took milliseconds a token (stalling the decode steps it shares); the automata take microseconds.
    stops = ["a" * 1023 + chr(ord("b") + i) for i in range(32)]
    d = Detokenizer(stops)
    start = time.perf_counter()
    emitted = "".join(d.feed(b"a") for _ in range(5000))
    assert time.perf_counter() - start < 5                     # a generous bound: catches a quadratic blow-up
    assert len(emitted) == 5000 - 1023 and not d.stopped


def test_coalesce_merges_only_what_is_already_queued():
    import asyncio

    from service.engines.base import Finish, Piece, TokenLogprob, coalesce

    lp = TokenLogprob("b", -0.5, b"b")
    queue: asyncio.Queue = asyncio.Queue()
    first = Piece("a", [], 1)
    assert coalesce(first, queue) == (first, None)                  # nothing behind it: sent as it is
    for item in (Piece("b", [lp], 1), Piece("cd", [], 2), Finish("stop", 3, 1, 4, 1), Piece("late", [], 1)):
        queue.put_nowait(item)
    merged, after = coalesce(first, queue)
    assert (merged.text, merged.logprobs, merged.tokens) == ("abcd", [lp], 4)
    assert isinstance(after, Finish) and queue.qsize() == 1          # stops at the first item that is no piece
