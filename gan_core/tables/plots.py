"""A table's plots/samples.png: each column's distribution, real (grey) beside generated (blue), one panel per column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from gan_core.tables.transform import numeric_values

PANEL_W, PANEL_H, COLUMNS, BINS, MAX_PANELS = 240, 140, 4, 12, 24
REAL, GENERATED = (150, 150, 150), (40, 100, 220)


def column_shares(real: pd.Series, fake: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Shares of rows per bin (numbers, datetimes) or per most frequent category, the missing ones last."""
    if kind in ("categorical", "boolean"):
        top = real.astype("object").value_counts().index[:BINS - 1].tolist()
        keys = [real.astype("object"), fake.astype("object")]
        counts = [np.array([(k == value).sum() for value in top] + [k.isna().sum()], dtype=float) for k in keys]
    else:
        values = [pd.Series(numeric_values(s, kind)) for s in (real, fake)]
        seen = values[0].dropna()
        low, high = (seen.min(), seen.max()) if len(seen) else (0.0, 1.0)
        edges = np.linspace(low, high if high > low else low + 1, BINS)
        counts = [np.r_[np.histogram(v.dropna().clip(low, high), edges)[0], v.isna().sum()].astype(float)
                  for v in values]
    return tuple(c / max(c.sum(), 1) for c in counts)


def write_marginals_png(real: pd.DataFrame, fake: pd.DataFrame, kinds: dict[str, str], path: Path) -> None:
    names = list(kinds)[:MAX_PANELS]
    rows = max(1, -(-len(names) // COLUMNS))
    image = Image.new("RGB", (PANEL_W * min(COLUMNS, max(1, len(names))), PANEL_H * rows), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for index, name in enumerate(names):
        left, top = (index % COLUMNS) * PANEL_W, (index // COLUMNS) * PANEL_H
        # The default bitmap font has no glyphs beyond Latin-1: other characters show as '?'.
        draw.text((left + 6, top + 4), name.encode("latin-1", "replace").decode("latin-1")[:36], fill="black", font=font)
        shares = column_shares(real[name], fake[name], kinds[name])
        peak, width = max(max(s.max() for s in shares), 1e-9), (PANEL_W - 16) / len(shares[0])
        for b, (r, f) in enumerate(zip(*shares)):
            x = left + 8 + b * width
            for offset, share, colour in ((0, r, REAL), (width / 2, f, GENERATED)):
                height = (PANEL_H - 34) * share / peak
                draw.rectangle([x + offset, top + PANEL_H - 10 - height, x + offset + width / 2 - 1, top + PANEL_H - 10],
                               fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
