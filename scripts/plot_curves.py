"""Line charts of a DVC plot CSV as a PNG, for places where `dvc plots show` (HTML) is not at hand, such as
a results folder on GitHub: `python scripts/plot_curves.py plots/losses.csv losses.png d_loss g_loss`.
Pillow only (no matplotlib in the project's dependencies)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
WIDTH, HEIGHT, MARGIN = 720, 360, 48


def read_columns(path: Path, x: str, ys: list[str]) -> tuple[list[float], dict[str, list[float]]]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    missing = [name for name in [x, *ys] if rows and name not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: no column {missing} (columns: {list(rows[0])})")
    return [float(r[x]) for r in rows], {y: [float(r[y]) for r in rows] for y in ys}


def draw(xs: list[float], series: dict[str, list[float]], title: str) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    low = min(min(v) for v in series.values())
    high = max(max(v) for v in series.values())
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (high - low) or 1.0

    def point(x: float, y: float) -> tuple[float, float]:
        return (MARGIN + (x - min(xs)) / span_x * (WIDTH - 2 * MARGIN),
                HEIGHT - MARGIN - (y - low) / span_y * (HEIGHT - 2 * MARGIN))

    pen.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="grey")
    pen.text((MARGIN, 12), title, fill="black")
    pen.text((4, MARGIN - 6), f"{high:.3g}", fill="black")
    pen.text((4, HEIGHT - MARGIN - 6), f"{low:.3g}", fill="black")
    pen.text((MARGIN, HEIGHT - MARGIN + 8), f"step {min(xs):g}", fill="black")
    pen.text((WIDTH - MARGIN - 60, HEIGHT - MARGIN + 8), f"{max(xs):g}", fill="black")
    for k, (name, ys) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        pen.line([point(x, y) for x, y in zip(xs, ys)], fill=colour, width=2)
        pen.text((WIDTH - MARGIN - 150, MARGIN + 8 + 14 * k), name, fill=colour)
    return image


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python scripts/plot_curves.py CSV PNG COLUMN [COLUMN ...]   (x: the step column)")
    source, target, columns = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    steps, values = read_columns(source, "step", columns)
    draw(steps, values, f"{source.name}: {', '.join(columns)}").save(target)
