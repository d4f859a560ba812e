"""The `gengate` command line (cli/), run as a real process against the real stack."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import cli.main as cli_main
from cli import commands, display
from common import golang, names
from gengate.v1 import generate_pb2 as pb
from service.models.store import ModelStore
from tests.conftest import REAL
from tests.tiny_gguf import write_tiny_llama, write_tiny_lora
from tests.tiny_mmproj import write_tiny_mmproj

ROOT = Path(__file__).resolve().parents[2]


def gengate(*args: str, env: dict | None = None, stdin: str | None = None, timeout: float = 120,
            cwd: Path = ROOT):
    """Runs `python -m cli ARGS` (in `cwd`) and returns the finished process (text output)."""
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout)


def stub_text(real, **request) -> str:
    return "".join(r.response for r in real.stub().Generate(pb.GenerateRequest(**request), timeout=120))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- against the running stack ---------------------------------------------------------------------------------------

def test_run_streams_the_same_text_as_the_rpc_and_ps_then_lists_the_model(real):
    prompt = "Why is the sky blue?"
    done = gengate("run", REAL, prompt, "--option", "num_predict=5", "--option", "temperature=0", "--verbose",
                   "--keepalive", "5m", "--host", real.grpc_target)
    assert done.returncode == 0, done.stderr
    expected = stub_text(real, model=REAL, prompt=prompt, options=pb.Options(num_predict=5, temperature=0))
    assert expected.strip() and done.stdout == expected + "\n"
    for label in ("total duration:", "prompt eval count:", "prompt eval rate:", "eval duration:", "eval rate:"):
        assert label in done.stderr
    assert "eval count:           5 token(s)" in done.stderr

    # The target can come from GENGATE_SERVICE_ADDR too.
    ps = gengate("ps", env={"GENGATE_SERVICE_ADDR": real.grpc_target})
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(r for r in rows if r.startswith(REAL + " "))
    assert "b179c9523d0e" in row and "100% CPU" in row and "from now" in row


def test_run_reads_the_prompt_from_stdin(real):
    done = gengate("run", "tiny", "--option", "num_predict=3", "--option", "temperature=0", "--host", real.grpc_target,
                   stdin="Hello there")
    assert done.returncode == 0, done.stderr
    assert done.stdout == stub_text(real, model="tiny", prompt="Hello there",
                                    options=pb.Options(num_predict=3, temperature=0)) + "\n"


def test_run_reports_service_errors_and_exits_1(real):
    done = gengate("run", "nope", "hi", "--host", real.grpc_target)
    assert done.returncode == 1
    assert "Error: model 'nope' not found" in done.stderr and done.stdout == ""
    unreachable = gengate("list", "--host", f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "Error: could not connect" in unreachable.stderr


def test_list_and_show(real):
    listed = gengate("list", "--host", real.grpc_target)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(r for r in listed.stdout.splitlines() if r.startswith(REAL + " "))
    assert "b179c9523d0e" in row and "98 MB" in row and row.endswith("ago")

    shown = gengate("show", REAL, "--host", real.grpc_target)
    assert shown.returncode == 0, shown.stderr
    assert "architecture" in shown.stdout and "llama" in shown.stdout and "completion" in shown.stdout
    template = gengate("show", REAL, "--template", "--host", real.grpc_target)
    assert "<|im_start|>" in template.stdout


def test_cp_and_rm_round_trip(real):
    copied = gengate("cp", "tiny", "cli-copy", "--host", real.grpc_target)
    assert copied.returncode == 0, copied.stderr
    assert "cli-copy:latest" in gengate("list", "--host", real.grpc_target).stdout
    removed = gengate("rm", "cli-copy", "--host", real.grpc_target)
    assert removed.returncode == 0, removed.stderr
    assert "cli-copy:latest" not in gengate("list", "--host", real.grpc_target).stdout
    again = gengate("rm", "cli-copy", "--host", real.grpc_target)
    assert again.returncode == 1 and "Error: model 'cli-copy' not found" in again.stderr


# -- the model lifecycle: import, pull, create ---------------------------------------------------------------------

def test_import_copies_a_gguf_into_the_store_with_a_progress_bar(tmp_path, fake):
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    store_dir = fake.service.store.root
    done = gengate("import", "cli-tiny:q4", str(gguf), "--template", "{{ .Prompt }}", "--system", "Be brief.",
                   "--message", "user:Hi: there", "--message", "assistant:Hello!", "--host", fake.grpc_target)
    assert done.returncode == 0, done.stderr
    assert "importing tiny.gguf 100% ▕" in done.stderr
    entry = ModelStore(store_dir).get(names.parse("cli-tiny:q4"))
    assert entry.digest == hashlib.sha256(gguf.read_bytes()).hexdigest() and entry.path.exists()
    assert (entry.template, entry.system) == ("{{ .Prompt }}", "Be brief.")
    assert entry.messages == ({"role": "user", "content": "Hi: there"}, {"role": "assistant", "content": "Hello!"})
    wrong = gengate("import", "x", str(gguf), "--message", "robot:beep", "--host", fake.grpc_target)
    assert wrong.returncode == 2 and "ROLE:TEXT" in wrong.stderr

    (tmp_path / "bad.gguf").write_bytes(b"not a model")
    bad = gengate("import", "bad", str(tmp_path / "bad.gguf"), "--host", fake.grpc_target)
    assert bad.returncode == 1 and "is not a GGUF or safetensors file" in bad.stderr


def test_import_and_run_an_image_model(tmp_path, fake):
    """An image model from a checkpoint and its separate VAE (safetensors), then a PNG with a bar of steps."""
    from PIL import Image

    from tests.tiny_diffusion import write_tiny_flux2
    checkpoint = write_tiny_flux2(tmp_path / "klein.gguf", vae=tmp_path / "ae.safetensors")
    done = gengate("import", "cli-flux", str(checkpoint), "--vae", str(tmp_path / "ae.safetensors"),
                   "--host", fake.grpc_target)
    assert done.returncode == 0, done.stderr
    assert "importing ae.safetensors 100% ▕" in done.stderr
    entry = ModelStore(fake.service.store.root).get(names.parse("cli-flux"))
    assert entry.kind == "image" and [role for role, _ in entry.components] == ["vae"]

    out = tmp_path / "out.png"
    run = gengate("run", "cli-flux", "a", "red", "kite", "--width", "64", "--height", "48", "--steps", "3",
                  "-o", str(out), "--host", fake.grpc_target)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"Image saved to: {out}\n"
    assert "generating 100% ▕█████████████████████████▏ 3/3" in run.stderr
    assert Image.open(out).size == (64, 48)
    named = gengate("run", "cli-flux", "A red kite!", "--width", "64", "--height", "64", "--steps", "1",
                    "--host", fake.grpc_target, cwd=tmp_path)
    again = gengate("run", "cli-flux", "A red kite!", "--width", "64", "--height", "64", "--steps", "1",
                    "--host", fake.grpc_target, cwd=tmp_path)
    assert named.returncode == again.returncode == 0, named.stderr + again.stderr
    assert Image.open(tmp_path / "a-red-kite.png").size == Image.open(tmp_path / "a-red-kite-2.png").size == (64, 64)
    too_big = gengate("run", "cli-flux", "x", "--width", "5000", "--host", fake.grpc_target)
    assert too_big.returncode == 1 and "width and height must be <= 4096" in too_big.stderr
    old_habit = gengate("run", "cli-flux", "x", "-o", "temperature=0", "--host", fake.grpc_target)
    assert old_habit.returncode == 1 and "use --option temperature=0" in old_habit.stderr

    (tmp_path / "Modelfile").write_text("FROM ./klein.gguf\nFROM ./ae.safetensors\n")
    made = gengate("create", "cli-flux-2", "-f", str(tmp_path / "Modelfile"), "--host", fake.grpc_target)
    assert made.returncode == 0 and "created 'cli-flux-2'" in made.stdout, made.stderr     # ae: the VAE's role
    assert ModelStore(fake.service.store.root).get(names.parse("cli-flux-2")).components == entry.components


def test_import_and_create_a_vision_model_with_its_projector(tmp_path, fake):
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    mmproj = write_tiny_mmproj(tmp_path / "mmproj.gguf")
    done = gengate("import", "cli-vision", str(gguf), "--projector", str(mmproj), "--host", fake.grpc_target)
    assert done.returncode == 0, done.stderr
    entry = ModelStore(fake.service.store.root).get(names.parse("cli-vision"))
    assert entry.projector is not None and entry.projector.read_bytes() == mmproj.read_bytes()
    assert "vision" in gengate("show", "cli-vision", "--host", fake.grpc_target).stdout
    # A Modelfile with two FROM files, as Ollama merges them: the model and its projector.
    (tmp_path / "Modelfile").write_text("FROM ./tiny.gguf\nFROM ./mmproj.gguf\n")
    made = gengate("create", "mf-vision", "-f", str(tmp_path / "Modelfile"), "--host", fake.grpc_target)
    assert made.returncode == 0, made.stderr
    assert ModelStore(fake.service.store.root).get(names.parse("mf-vision")).projector == entry.projector
    (tmp_path / "sub").mkdir()
    write_tiny_mmproj(tmp_path / "sub" / "tiny.gguf")
    (tmp_path / "Twice").write_text("FROM ./tiny.gguf\nFROM ./sub/tiny.gguf\n")
    twice = gengate("create", "mf-twice", "-f", str(tmp_path / "Twice"), "--host", fake.grpc_target)
    assert twice.returncode == 1 and "two FROM files are named tiny.gguf" in twice.stderr
    # A projector for another model (its embedding size differs) is refused, and nothing is created.
    wrong = write_tiny_mmproj(tmp_path / "narrow.gguf", n_embd_text=32)
    refused = gengate("import", "cli-blind", str(gguf), "--projector", str(wrong), "--host", fake.grpc_target)
    assert refused.returncode == 1 and "projector" in refused.stderr
    assert ModelStore(fake.service.store.root).get(names.parse("cli-blind")) is None


def test_create_from_a_modelfile_uploads_its_files_and_reads_its_layers(tmp_path, fake):
    write_tiny_llama(tmp_path / "weights.gguf", seed=5)
    write_tiny_lora(tmp_path / "style.gguf")
    (tmp_path / "Modelfile").write_text(
        "# a pirate\nFROM ./weights.gguf\nADAPTER ./style.gguf\nparameter temperature 0.25\n"
        'PARAMETER stop "<|end|>"\nPARAMETER stop <|eot|>\nSYSTEM """You are a pirate.\nArr."""\n'
        "TEMPLATE {{ .System }} {{ .Prompt }}\nMESSAGE user Ahoy\nLICENSE MIT\n")
    done = gengate("create", "pirate:cli", "-f", str(tmp_path / "Modelfile"), "--host", fake.grpc_target)
    assert done.returncode == 0, done.stderr
    assert "uploading weights.gguf 100%" in done.stderr and "writing manifest" in done.stderr
    entry = ModelStore(fake.service.store.root).get(names.parse("pirate:cli"))
    assert entry.parameters == {"temperature": 0.25, "stop": ["<|end|>", "<|eot|>"]}
    assert (entry.system, entry.template, entry.license) == ("You are a pirate.\nArr.", "{{ .System }} {{ .Prompt }}",
                                                             ("MIT",))
    assert entry.messages == ({"role": "user", "content": "Ahoy"},) and len(entry.adapters) == 1
    # The Modelfile that show writes reads back.
    shown = gengate("show", "pirate:cli", "--modelfile", "--host", fake.grpc_target).stdout
    (tmp_path / "Again").write_text(shown)
    again = gengate("create", "pirate:again", "-f", str(tmp_path / "Again"), "--host", fake.grpc_target)
    assert again.returncode == 0, again.stderr
    copy = ModelStore(fake.service.store.root).get(names.parse("pirate:again"))
    assert (copy.digest, copy.parameters, copy.system, copy.parent) == (entry.digest, entry.parameters, entry.system,
                                                                       "pirate:cli")
    broken = gengate("create", "x", "-f", str(tmp_path / "nope"), "--host", fake.grpc_target)
    assert broken.returncode == 1 and "Error:" in broken.stderr


def test_pull_shows_progress_and_refuses_names_outside_the_catalog(fake):
    done = gengate("pull", "all-minilm", "--host", fake.grpc_target)
    assert done.returncode == 0, done.stderr
    assert "pulling manifest" in done.stderr and "success" in done.stderr
    missing = gengate("pull", "nope:1", "--host", fake.grpc_target)
    assert missing.returncode == 1 and "Error: pull model manifest: file does not exist" in missing.stderr


def test_serve_runs_service_and_gateway_and_exits_0_on_sigterm(models):
    http = f"127.0.0.1:{free_port()}"
    grpc_addr = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "GENGATE_MODELS": str(models), "GENGATE_DEFAULT_MODEL": "", "GENGATE_LOG_LEVEL": "WARNING",
           "GENGATE_HTTP_ADDR": http, "GENGATE_GRPC_ADDR": grpc_addr, "GENGATE_SERVICE_ADDR": grpc_addr,
           "GENGATE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
           "GENGATE_GATEWAY_METRICS_ADDR": f"127.0.0.1:{free_port()}"}
    serve = subprocess.Popen([sys.executable, "-m", "cli", "serve"], cwd=ROOT, env=env)
    try:
        deadline, body = time.monotonic() + 90, ""
        while time.monotonic() < deadline and serve.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://{http}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert body == "Ollama is running"
        listed = gengate("list", "--host", grpc_addr)
        assert listed.returncode == 0 and "tiny:latest" in listed.stdout
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


# -- helpers, in process -------------------------------------------------------------------------------------------

def test_formatting_follows_ollama():
    assert [display.human_bytes(n) for n in (512, 2_000, 98_362_432, 1_500_000_000)] == ["512 B", "2 KB", "98 MB", "1.5 GB"]
    now = 1_000_000_000.0
    assert [display.human_time(now - s, now) for s in (0.2, 45, 150, 5400, 3 * 86400)] == [
        "Less than a second ago", "45 seconds ago", "2 minutes ago", "2 hours ago", "3 days ago"]
    assert display.human_time(now + 299.5, now) == "4 minutes from now"
    assert display.human_time(now + 292 * 365 * 86400, now) == "Forever" and display.human_time(None) == "Never"
    assert [golang.format_duration(n) for n in (0, 1_500, 12_345_678, 1_234_567_891, 65_500_000_000)] == [
        "0s", "1.5µs", "12.345678ms", "1.234567891s", "1m5.5s"]


def test_options_are_typed_by_their_field():
    args = cli_main.parser().parse_args(["run", "m", "p", "--option", "num_predict=5", "--option", "temperature=0.5",
                                         "--option", "use_mmap=false", "--option", "stop=a", "--option", "stop=b",
                                         "--think-level", "high", "--format", "json", "--keepalive=-1s"])
    request = commands.build_request(args, "p")
    assert request.options == pb.Options(num_predict=5, temperature=0.5, use_mmap=False, stop=["a", "b"])
    assert request.think.level == pb.THINK_LEVEL_HIGH and request.format.json
    assert request.keep_alive.ToNanoseconds() == -1_000_000_000
    for bad in ("num_predict=x", "nope=1", "num_predict"):
        with pytest.raises(SystemExit):
            cli_main.parser().parse_args(["run", "m", "--option", bad])
