"""What the command line shows: sizes, durations and times as Ollama's CLI writes them, tables, progress bars,
the stats of a run, and the error that ends a command."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from common import golang
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb


class CLIError(Exception):
    """Ends the command with `Error: <message>` on stderr and exit status 1."""


def human_bytes(size: int) -> str:
    """Decimal units as `ollama list` shows them: "98 MB", "1.5 GB", "512 B"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_duration(seconds: float) -> str:
    """A rough, friendly length of time: "2 minutes", "About an hour", "3 days"."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 730:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds / (86400 * 365))} years"


def human_time(when: float | None, now: float | None = None, zero: str = "Never") -> str:
    """A moment relative to now: "2 minutes ago", "4 minutes from now", "Forever" (20+ years ahead)."""
    if when is None:
        return zero
    delta = (time.time() if now is None else now) - when
    if delta < -20 * 365 * 86400:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def seconds(ts) -> float | None:
    """A google.protobuf.Timestamp as Unix seconds; None when unset."""
    return None if (ts.seconds, ts.nanos) == (0, 0) else ts.seconds + ts.nanos / 1e9


def print_stats(reply: pb.GenerateResponse) -> None:
    """Ollama's `--verbose` summary, on stderr."""
    lines = []
    total, load = reply.total_duration.ToNanoseconds(), reply.load_duration.ToNanoseconds()
    prompt_ns, eval_ns = reply.prompt_eval_duration.ToNanoseconds(), reply.eval_duration.ToNanoseconds()
    if total > 0:
        lines.append(f"total duration:       {golang.format_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {golang.format_duration(load)}")
    if reply.prompt_eval_count > 0:
        lines.append(f"prompt eval count:    {reply.prompt_eval_count} token(s)")
    if prompt_ns > 0:
        lines.append(f"prompt eval duration: {golang.format_duration(prompt_ns)}")
        lines.append(f"prompt eval rate:     {reply.prompt_eval_count / (prompt_ns / 1e9):.2f} tokens/s")
    if reply.eval_count > 0:
        lines.append(f"eval count:           {reply.eval_count} token(s)")
    if eval_ns > 0:
        lines.append(f"eval duration:        {golang.format_duration(eval_ns)}")
        lines.append(f"eval rate:            {reply.eval_count / (eval_ns / 1e9):.2f} tokens/s")
    if lines:
        print("\n".join(lines), file=sys.stderr, flush=True)


def processor(model: mpb.RunningModel) -> str:
    if model.size_vram == 0:
        return "100% CPU"
    if model.size_vram >= model.size:
        return "100% GPU"
    cpu = round((model.size - model.size_vram) / model.size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


class ProgressBar:
    """`label  45% ▕█████     ▏  44 MB/98 MB` on stderr: redrawn in place on a terminal, else a line now and then."""

    WIDTH = 25

    def __init__(self, label: str, total: int, count: Callable[[int], str] = human_bytes):
        self.label, self.total, self.count = label, total, count
        self.tty = sys.stderr.isatty()
        self.last = -math.inf
        self.shown = -1                      # the count last drawn

    def line(self, done: int) -> str:
        fraction = done / self.total if self.total else 1.0
        filled = int(fraction * self.WIDTH)
        bar = "█" * filled + " " * (self.WIDTH - filled)
        return (f"{self.label} {int(fraction * 100):3d}% ▕{bar}▏ "
                f"{self.count(done)}/{self.count(self.total)}")

    def update(self, done: int, force: bool = False) -> None:
        """Redraws the bar (at most every 0.1 s on a terminal, 5 s elsewhere, unless `force`: a slow count)."""
        if force or time.monotonic() - self.last >= (0.1 if self.tty else 5.0):
            self.last, self.shown = time.monotonic(), done
            sys.stderr.write(("\r" + self.line(done) + "\x1b[K") if self.tty else self.line(done) + "\n")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.shown == self.total and not self.tty:
            return
        sys.stderr.write(("\r" + self.line(self.total) + "\x1b[K\n") if self.tty else self.line(self.total) + "\n")
        sys.stderr.flush()
