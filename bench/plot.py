"""Plots of `make bench`'s N-stream results as SVG line charts (no plotting library needed)."""
from __future__ import annotations

import math
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
LABELS = {"fast": "gengate (default layout)", "invariant": "gengate (batch-invariant)",
          "engine": "gengate engine in process", "simple": "gengate simple"}


def chart(title: str, ylabel: str, series: dict[str, list[tuple[float, float]]], width: int = 640,
          height: int = 360) -> str:
    left, right, top, bottom = 60, 200, 30, 40
    xs = sorted({x for points in series.values() for x, _ in points})
    ymax = max((y for points in series.values() for _, y in points if math.isfinite(y)), default=1.0) * 1.1
    px = lambda x: left + (width - left - right) * (xs.index(x) / max(1, len(xs) - 1))      # noqa: E731
    py = lambda y: top + (height - top - bottom) * (1 - y / ymax)                          # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="12">', f'<text x="{left}" y="18" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
           f'<text x="{(width - right + left) / 2}" y="{height - 8}" text-anchor="middle">concurrent streams (N)'
           '</text>', f'<text x="14" y="{(height - bottom + top) / 2}" transform="rotate(-90 14 '
           f'{(height - bottom + top) / 2})" text-anchor="middle">{ylabel}</text>']
    for x in xs:
        out.append(f'<text x="{px(x)}" y="{height - bottom + 15}" text-anchor="middle">{x:g}</text>')
    for i in range(5):
        y = ymax * i / 4
        out.append(f'<text x="{left - 5}" y="{py(y) + 4}" text-anchor="end">{y:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{py(y)}" x2="{width - right}" y2="{py(y)}" stroke="#ddd"/>')
    for k, (name, points) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points if math.isfinite(y))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in points
                if math.isfinite(y)]
        out.append(f'<rect x="{width - right + 10}" y="{top + 18 * k}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{width - right + 28}" y="{top + 18 * k + 10}">{LABELS.get(name, name)}</text>')
    return "\n".join(out + ["</svg>"])


def write(table: dict[int, dict], folder: Path) -> list[Path]:
    """bench-throughput.svg and bench-ttft.svg in `folder`, from the N-stream table."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(next(iter(table.values())))
    tok = {name: [(n, row[name]["tok_s"]) for n, row in table.items()] for name in names}
    ttft = {name: [(n, row[name]["ttft_p50"] * 1000) for n, row in table.items()] for name in names}
    paths = [folder / "bench-throughput.svg", folder / "bench-ttft.svg"]
    paths[0].write_text(chart("Aggregate throughput", "tokens / s", tok))
    paths[1].write_text(chart("Time to first token, median", "ms", ttft))
    return paths
