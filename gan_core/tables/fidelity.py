"""A cheap fidelity score for checkpoint selection, in numpy: SDMetrics' quality score in miniature.

Column shapes (KS complement for numbers and dates, total-variation complement for categories) and
column pair trends (total-variation complement of 2-D histograms, numbers binned at the real data's
deciles), averaged as SDMetrics' QualityReport averages its two properties.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from gan_core.tables.transform import TableTransformer, numeric_values

BINS = 10
MAX_PAIRS = 300  # column pairs scored at most (evenly spread over all pairs): the score stays cheap on wide tables


def real_values(transformer: TableTransformer, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Real rows in `decode`'s form: float values (NaN missing) or category codes (-1 missing, -2 unseen)."""
    out = {}
    for col in transformer.columns:
        series = df[col["name"]]
        if "categories" in col:
            lookup = {(type(c) is bool, c): i for i, c in enumerate(col["categories"])}
            values = series.to_numpy(dtype=object)
            null = series.isna().to_numpy()
            out[col["name"]] = np.array([-1 if n else lookup.get((type(v) is bool, _plain(v)), -2)
                                         for v, n in zip(values, null)], dtype=np.int64)
        else:
            out[col["name"]] = numeric_values(series, col["kind"], col.get("text_format"))
    return out


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _ks_complement(a: np.ndarray, b: np.ndarray) -> float:
    null_gap = abs(np.isnan(a).mean() - np.isnan(b).mean())
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if not len(a) or not len(b):
        return 1.0 - null_gap if len(a) == len(b) else 0.0
    grid = np.concatenate([a, b])
    ks = np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)).max()
    return float(1.0 - max(ks, null_gap))


def _tv_complement(a: np.ndarray, b: np.ndarray, size: int) -> float:
    pa = np.bincount(a, minlength=size) / max(len(a), 1)
    pb = np.bincount(b, minlength=size) / max(len(b), 1)
    return float(1.0 - 0.5 * np.abs(pa - pb).sum())


def _codes(real: np.ndarray, fake: np.ndarray, discrete: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Both columns as small non-negative codes: categories shifted past -2/-1, numbers binned at real deciles."""
    if discrete:
        size = int(max(real.max(initial=0), fake.max(initial=0))) + 3
        return real + 2, fake + 2, size
    finite = real[~np.isnan(real)]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1])) if len(finite) else np.zeros(0)

    def binned(v):
        return np.where(np.isnan(v), len(edges) + 1, np.searchsorted(edges, np.nan_to_num(v), side="right"))
    return binned(real), binned(fake), len(edges) + 2


def conditional_shapes(transformer: TableTransformer, real: dict[str, np.ndarray], fake: dict[str, np.ndarray],
                       condition: str) -> float:
    """Column shapes within each category of the condition column, weighted by its real frequency: how well
    the rows of each class look like that class's real rows (what a classifier trained on them needs)."""
    discrete = {c["name"]: "categories" in c for c in transformer.columns}
    codes, total, score = real[condition], 0, 0.0
    for category in np.unique(codes[codes >= 0]):
        r, f = codes == category, fake[condition] == category
        if not f.any():
            total += r.sum()  # a class the generator never emits scores 0
            continue
        shapes = []
        for name in (n for n in discrete if n != condition):
            if discrete[name]:
                a, b, size = _codes(real[name][r], fake[name][f], True)
                shapes.append(_tv_complement(a, b, size))
            else:
                shapes.append(_ks_complement(real[name][r], fake[name][f]))
        total, score = total + r.sum(), score + r.sum() * (np.mean(shapes) if shapes else 1.0)
    return float(score / total) if total else 1.0


def fidelity_score(transformer: TableTransformer, real: dict[str, np.ndarray], fake: dict[str, np.ndarray],
                   condition: str | None = None) -> dict:
    """{"shapes", "pairs", "score"} (and "conditional" with a condition column): each in [0, 1], higher is
    closer to the real rows; the score is their mean."""
    names = [c["name"] for c in transformer.columns]
    discrete = {c["name"]: "categories" in c for c in transformer.columns}
    shapes, codes = [], {}
    for name in names:
        a, b, size = _codes(real[name], fake[name], discrete[name])
        codes[name] = (a, b, size)
        shapes.append(_tv_complement(a, b, size) if discrete[name] else _ks_complement(real[name], fake[name]))
    pairs = list(combinations(names, 2))
    if len(pairs) > MAX_PAIRS:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, MAX_PAIRS).astype(int)]
    trends = []
    for x, y in pairs:
        (ax, bx, sx), (ay, by, sy) = codes[x], codes[y]
        trends.append(_tv_complement(ax * sy + ay, bx * sy + by, sx * sy))
    shape, pair = float(np.mean(shapes)), float(np.mean(trends)) if trends else float(np.mean(shapes))
    if condition is None:
        return {"shapes": shape, "pairs": pair, "score": (shape + pair) / 2}
    within = conditional_shapes(transformer, real, fake, condition)
    return {"shapes": shape, "pairs": pair, "conditional": within, "score": (shape + pair + within) / 3}
