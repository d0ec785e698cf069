"""Discriminator scores as both kinds report them: a summary and the histogram plots/d_scores.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def score_summary(scores: np.ndarray) -> dict:
    q10, q50, q90 = np.quantile(scores, [0.1, 0.5, 0.9])
    return {"mean": float(scores.mean()), "p10": float(q10), "p50": float(q50), "p90": float(q90)}


def write_score_histogram(path: Path, real: np.ndarray, fake: np.ndarray, bins: int = 20) -> None:
    edges = np.linspace(0, 1, bins + 1)
    real_counts, _ = np.histogram(real, edges)
    fake_counts, _ = np.histogram(fake, edges)
    rows = ["score,real,generated"] + [f"{(a + b) / 2:.3f},{r / len(real):.5f},{f / len(fake):.5f}"
                                        for a, b, r, f in zip(edges, edges[1:], real_counts, fake_counts)]
    path.write_text("\n".join(rows) + "\n")
