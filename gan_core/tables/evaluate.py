"""Evaluators for tables, registered by name like the image ones: SDMetrics quality and diagnostics, utility,
distance to closest record, a real-vs-synthetic detection classifier and marginal plots (DVC plot CSVs)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import f1_score, r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from gan_core.tables.schema import TableError, TableSchema
from gan_core.tables.transform import numeric_values

NUMERIC = ("continuous", "integer", "datetime")
SDTYPES = {"continuous": "numerical", "integer": "numerical", "categorical": "categorical", "boolean": "boolean",
           "datetime": "datetime"}
MAX_CODES = 250  # categories kept apart per column for the classifiers (the rest share one code): HistGB's bins
MIN_ROWS = 10  # rows on each side below which a classifier-based metric means nothing
# HistGradientBoosting's OpenMP threads spin while they wait: on a busy 2-core machine two of them took 30x the
# CPU time of one (34 s against about 1 s for `utility` on 120 rows). One thread: cheap, and the same on any machine.
CLASSIFIER_THREADS = 1


class NotApplicable(Exception):
    """An evaluator that cannot measure these tables (no target column, too few rows)."""


@dataclass
class TableEvalContext:
    train: pd.DataFrame  # the rows the model was trained on
    test: pd.DataFrame  # held-out real rows: the reference of the reported numbers
    synthetic: pd.DataFrame
    schema: TableSchema
    plots_dir: Path | None
    seed: int

    @cached_property
    def metadata(self) -> dict:
        """SDMetrics' single-table metadata for the schema's kinds."""
        return {"columns": {c.name: {"sdtype": SDTYPES[c.kind]} for c in self.schema.columns}}

    @cached_property
    def encoded(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each split as (numbers: float, NaN missing; codes: int, -1 missing) over the schema's columns."""
        return dict(zip(("train", "test", "synthetic"), encode([self.train, self.test, self.synthetic], self.schema)))


TableEvaluator = Callable[[TableEvalContext], dict]
TABLE_EVALUATORS: dict[str, TableEvaluator] = {}


def register(name: str) -> Callable[[TableEvaluator], TableEvaluator]:
    def add(fn: TableEvaluator) -> TableEvaluator:
        TABLE_EVALUATORS[name] = fn
        return fn
    return add


# --- encoding shared by the distances and the classifiers ------------------------------------------------

def encode(frames: list[pd.DataFrame], schema: TableSchema) -> list[tuple[np.ndarray, np.ndarray]]:
    """Numeric columns (continuous, integer, datetime in seconds) as floats with NaN; categorical and boolean
    ones as codes of the first frame's categories by frequency (-1 missing, one shared code for the rest)."""
    numeric = [c for c in schema.columns if c.kind in NUMERIC]
    discrete = [c for c in schema.columns if c.kind not in NUMERIC]
    out = [(np.empty((len(f), len(numeric))), np.empty((len(f), len(discrete)), np.int64)) for f in frames]
    for j, spec in enumerate(numeric):
        for (numbers, _), frame in zip(out, frames):
            numbers[:, j] = numeric_values(frame[spec.name], spec.kind)
    for j, spec in enumerate(discrete):
        keys = [frame[spec.name].map(_category_key, na_action="ignore") for frame in frames]
        top = keys[0].value_counts(dropna=True).index[:MAX_CODES]
        lookup = {key: code for code, key in enumerate(top)}
        for (_, codes), key in zip(out, keys):
            codes[:, j] = [-1 if pd.isna(k) else lookup.get(k, len(top)) for k in key.to_numpy(dtype=object)]
    return out


def _category_key(value) -> str:
    # True and 1 are one dict key; their types keep them apart (a column may mix them).
    value = value.item() if isinstance(value, np.generic) else value
    return f"{type(value).__name__}:{value}"


def _check_columns(frames: dict[str, pd.DataFrame], schema: TableSchema) -> None:
    for split, frame in frames.items():
        missing = [name for name in schema.names if name not in frame.columns]
        if missing:
            raise TableError(f"evaluate: the {split} rows lack column(s) {missing}")


# --- SDMetrics reports ------------------------------------------------------------------------------

def _sdmetrics(report_class, real: pd.DataFrame, synthetic: pd.DataFrame, metadata: dict) -> dict[str, float]:
    """A report's overall score and its properties' scores."""
    report = report_class()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SDMetrics warns per column about constant or all-missing data
        report.generate(real, synthetic, metadata, verbose=False)
    properties = report.get_properties()
    return {"score": float(report.get_score()),
            **{name: float(score) for name, score in zip(properties["Property"], properties["Score"])}}


@register("quality")
def quality(ctx: TableEvalContext) -> dict:
    """SDMetrics' QualityReport of the synthetic rows against the real test rows: column shapes (KS / TV
    complement per column), column pair trends (correlation / contingency similarity per pair), their mean.

    `quality_floor` is the real training rows measured the same way: what a generator that reproduced its
    training data's distribution would score, finite-sample noise included (as fd_floor for images)."""
    columns = ctx.schema.names
    scores = _sdmetrics(_quality_report(), ctx.test[columns], ctx.synthetic[columns], ctx.metadata)
    floor = _sdmetrics(_quality_report(), ctx.test[columns], ctx.train[columns], ctx.metadata)
    return {"quality": scores["score"], "column_shapes": scores["Column Shapes"],
            "column_pair_trends": scores["Column Pair Trends"], "quality_floor": floor["score"]}


@register("diagnostic")
def diagnostic(ctx: TableEvalContext) -> dict:
    """SDMetrics' DiagnosticReport against the training rows: validity (values within the real ranges and
    categories, keys) and structure (the same columns)."""
    columns = ctx.schema.names
    scores = _sdmetrics(_diagnostic_report(), ctx.train[columns], ctx.synthetic[columns], ctx.metadata)
    return {"diagnostic": scores["score"], "diagnostic_validity": scores["Data Validity"],
            "diagnostic_structure": scores["Data Structure"]}


def _quality_report():
    from sdmetrics.reports.single_table import QualityReport  # imported when used: SDMetrics loads slowly
    return QualityReport


def _diagnostic_report():
    from sdmetrics.reports.single_table import DiagnosticReport
    return DiagnosticReport


# --- utility ----------------------------------------------------------------------------------------

def _features(ctx: TableEvalContext, split: str, drop: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split as a feature matrix for HistGradientBoosting (codes as categorical features), without `drop`."""
    numbers, codes = ctx.encoded[split]
    numeric = [c.name for c in ctx.schema.columns if c.kind in NUMERIC]
    discrete = [c.name for c in ctx.schema.columns if c.kind not in NUMERIC]
    keep_n = [j for j, name in enumerate(numeric) if name != drop]
    keep_d = [j for j, name in enumerate(discrete) if name != drop]
    x = np.concatenate([numbers[:, keep_n], np.where(codes[:, keep_d] < 0, np.nan, codes[:, keep_d])], axis=1)
    return x, np.r_[np.zeros(len(keep_n), bool), np.ones(len(keep_d), bool)]


def _target(ctx: TableEvalContext, split: str) -> np.ndarray:
    spec = ctx.schema.column(ctx.schema.target)
    numbers, codes = ctx.encoded[split]
    group = [c.name for c in ctx.schema.columns if (c.kind in NUMERIC) == (spec.kind in NUMERIC)]
    column = (numbers if spec.kind in NUMERIC else codes)[:, group.index(spec.name)]
    return column.astype(np.float64) if spec.kind in NUMERIC else np.where(column < 0, np.nan, column)


def _fit_score(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, categorical: np.ndarray,
               classification: bool, seed: int) -> float:
    """Macro F1 (classification) or R^2 (regression) on the test rows of one fixed model fitted on (x, y)."""
    known = ~np.isnan(y)
    x, y = x[known], y[known]
    if classification and len(np.unique(y)) < 2:  # a generator that emits one class: predict it
        predicted = np.full(len(test_y), y[0] if len(y) else -1.0)
    else:
        kind = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        model = kind(max_iter=100, categorical_features=categorical, random_state=seed)
        with threadpool_limits(CLASSIFIER_THREADS):
            predicted = model.fit(x, y).predict(test_x)
    if classification:
        return float(f1_score(test_y, predicted, average="macro"))
    return float(r2_score(test_y, predicted))


@register("utility")
def utility(ctx: TableEvalContext) -> dict:
    """Train on synthetic, test on real: a fixed HistGradientBoosting model predicts prepare.target on the real
    test rows, trained on as many synthetic rows as there are real training rows, and trained on those real
    rows; `utility` is the first score over the second. Macro F1 for a categorical or boolean target, R^2
    for a numeric one."""
    target = ctx.schema.target
    if target is None:
        raise NotApplicable("utility needs prepare.target")
    classification = ctx.schema.column(target).kind not in NUMERIC
    test_x, categorical = _features(ctx, "test", drop=target)
    if not test_x.shape[1]:
        raise NotApplicable("utility needs a column besides the target")
    test_y = _target(ctx, "test")
    known = ~np.isnan(test_y)
    if known.sum() < MIN_ROWS:
        raise NotApplicable(f"utility needs at least {MIN_ROWS} test rows with a target (got {known.sum()})")
    scores = {}
    for split in ("synthetic", "train"):
        x, _ = _features(ctx, split, drop=target)
        rows = slice(0, len(ctx.train))  # as many synthetic rows as real ones: sample size is not quality
        scores[split] = _fit_score(x[rows], _target(ctx, split)[rows], test_x[known], test_y[known], categorical,
                                   classification, ctx.seed)
    metric = "f1_macro" if classification else "r2"
    return {"utility": scores["synthetic"] / scores["train"] if scores["train"] else float("nan"),
            f"utility_{metric}_synthetic": scores["synthetic"], f"utility_{metric}_real": scores["train"]}


# --- distance to closest record -----------------------------------------------------------------------

def gower_nearest(queries: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray],
                  ranges: np.ndarray, block_cells: int = 2**21) -> np.ndarray:
    """Each query row's distance to its nearest reference row: the mean over columns of |a - b| / range
    (capped at 1) for numbers and 0 / 1 for categories; missing against missing 0, against a value 1.
    Query rows go in blocks of about `block_cells` distances (16 MiB a float array), never N x M at once."""
    (qn, qc), (rn, rc) = queries, reference
    columns = qn.shape[1] + qc.shape[1]
    block = max(1, block_cells // max(1, len(rn)))
    out = np.empty(len(qn))
    for start in range(0, len(qn), block):
        rows = slice(start, start + block)
        total = np.zeros((len(qn[rows]), len(rn)))
        for j in range(qn.shape[1]):
            a, b = qn[rows, j][:, None], rn[None, :, j]
            d = np.minimum(np.abs(a - b) / ranges[j], 1.0)
            total += np.where(np.isnan(a) & np.isnan(b), 0.0, np.where(np.isnan(d), 1.0, d))
        for j in range(qc.shape[1]):
            total += qc[rows, j][:, None] != rc[None, :, j]
        out[rows] = total.min(axis=1) / columns
    return out


@register("dcr")
def distance_to_closest_record(ctx: TableEvalContext) -> dict:
    """Privacy: how near synthetic rows come to training rows, against how near unseen real rows come.

    Distances are Gower's (`gower_nearest`, numeric ranges of the training rows). The held-out test rows' own
    distances to the training rows are the reference: a generator that copies rows has synthetic distances
    below them (`dcr_ratio` < 1, `dcr_copies` above `dcr_copies_holdout`); one that draws new rows from the
    same distribution scores ratios about 1."""
    train = ctx.encoded["train"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns
        low, high = np.nanmin(train[0], axis=0, initial=np.inf), np.nanmax(train[0], axis=0, initial=-np.inf)
    ranges = np.where(np.isfinite(high - low) & (high > low), high - low, 1.0)
    synthetic = gower_nearest(ctx.encoded["synthetic"], train, ranges)
    holdout = gower_nearest(ctx.encoded["test"], train, ranges)
    out = {}
    for name, q in (("median", 50), ("p5", 5)):
        s, h = np.percentile(synthetic, q), np.percentile(holdout, q)
        out |= {f"dcr_{name}": float(s), f"dcr_{name}_holdout": float(h), f"dcr_{name}_ratio": _ratio(s, h)}
    return out | {"dcr_ratio": out["dcr_median_ratio"], "dcr_copies": float((synthetic == 0).mean()),
                  "dcr_copies_holdout": float((holdout == 0).mean())}


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else (1.0 if a == 0 else float("inf"))


# --- detection ----------------------------------------------------------------------------------------

@register("detection")
def detection(ctx: TableEvalContext) -> dict:
    """How well a classifier tells real test rows from synthetic ones: the ROC AUC of HistGradientBoosting,
    5-fold cross-validated on the test rows and as many synthetic rows. 0.5: it cannot; lower is better."""
    real_x, categorical = _features(ctx, "test")
    fake_x, _ = _features(ctx, "synthetic")
    n = min(len(real_x), len(fake_x))
    if n < MIN_ROWS:
        raise NotApplicable(f"detection needs at least {MIN_ROWS} test and synthetic rows (got {n})")
    fake_x = fake_x[np.random.default_rng(ctx.seed).permutation(len(fake_x))[:n]]
    x, y = np.concatenate([real_x[:n], fake_x]), np.r_[np.ones(n), np.zeros(n)]
    model = HistGradientBoostingClassifier(max_iter=100, categorical_features=categorical, random_state=ctx.seed)
    folds = StratifiedKFold(5, shuffle=True, random_state=ctx.seed)
    with threadpool_limits(CLASSIFIER_THREADS):
        p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    return {"detection_auc": float(roc_auc_score(y, p))}


# --- marginal plots -----------------------------------------------------------------------------------

BINS = 20
MAX_CATEGORIES = 30  # bars per categorical plot; the rest are summed as "(other)"


@register("marginals")
def marginals(ctx: TableEvalContext) -> dict:
    """plots/marginals/NN-<name>.csv per column (DVC plots): the share of real test and synthetic rows per
    bin (numbers: 20 equal bins over the real values), per value (integers with at most 20 values) or per
    category, missing values as "(missing)"."""
    if ctx.plots_dir is None:
        raise NotApplicable("marginals need a plots folder")
    folder = Path(ctx.plots_dir) / "marginals"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.csv"):
        old.unlink()
    for index, (spec, file_name) in enumerate(zip(ctx.schema.columns, marginal_file_names(ctx.schema.names))):
        real, fake = ctx.test[spec.name], ctx.synthetic[spec.name]
        if spec.kind == "integer" and real.nunique() <= BINS:  # a count or a code: one bar per value
            table = _discrete_marginal(real, fake, by_value=True)
        elif spec.kind in NUMERIC:
            table = _numeric_marginal(real, fake, spec.kind)
        else:
            table = _discrete_marginal(real, fake)
        table.insert(0, "column", spec.name)
        table.to_csv(folder / file_name, index=False)
    return {}


def marginal_file_names(names: list[str]) -> list[str]:
    """A safe, distinct file name per column: its index, then its name with all but [A-Za-z0-9_-] dropped."""
    safe = [re.sub(r"[^\w-]+", "_", name, flags=re.ASCII).strip("_")[:40] for name in names]
    return [f"{k:02d}-{name}.csv" if name else f"{k:02d}.csv" for k, name in enumerate(safe)]


def _shares(counts: np.ndarray, total: int) -> np.ndarray:
    return np.round(counts / max(total, 1), 5)


def _numeric_marginal(real: pd.Series, fake: pd.Series, kind: str) -> pd.DataFrame:
    r, f = numeric_values(real, kind), numeric_values(fake, kind)
    known = r[~np.isnan(r)]
    low, high = (known.min(), known.max()) if len(known) else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    labels = (pd.to_datetime(centres, unit="s").strftime("%Y-%m-%d %H:%M:%S") if kind == "datetime"
              else [f"{c:.6g}" for c in centres])
    # Values beyond the real range land in the outer bins: the plot shows them rather than drop them.
    r_counts = np.bincount(np.clip(np.digitize(known, edges[1:-1]), 0, BINS - 1), minlength=BINS)
    f_known = f[~np.isnan(f)]
    f_counts = np.bincount(np.clip(np.digitize(f_known, edges[1:-1]), 0, BINS - 1), minlength=BINS)
    table = pd.DataFrame({"value": labels, "real": _shares(r_counts, len(r)), "generated": _shares(f_counts, len(f))})
    missing = pd.DataFrame({"value": ["(missing)"], "real": _shares(np.isnan(r).sum(), len(r)),
                            "generated": _shares(np.isnan(f).sum(), len(f))})
    return pd.concat([table, missing], ignore_index=True) if np.isnan(r).any() or np.isnan(f).any() else table


def _discrete_marginal(real: pd.Series, fake: pd.Series, by_value: bool = False) -> pd.DataFrame:
    """Shares per category, most frequent real first (by_value: integers in increasing order, missing last)."""
    if by_value:
        real, fake = (pd.to_numeric(s).round().astype("Int64") for s in (real, fake))
    r = real.astype(object).where(real.notna(), "(missing)").astype(str)
    f = fake.astype(object).where(fake.notna(), "(missing)").astype(str)
    counts = pd.DataFrame({"real": r.value_counts(), "generated": f.value_counts()}).fillna(0)
    if by_value:
        counts = counts.sort_index(key=lambda v: pd.to_numeric(v, errors="coerce").fillna(np.inf))
    else:
        counts = counts.sort_values(["real", "generated"], ascending=False)
    if len(counts) > MAX_CATEGORIES:
        rest = counts.iloc[MAX_CATEGORIES - 1:].sum().to_frame("(other)").T
        counts = pd.concat([counts.iloc[:MAX_CATEGORIES - 1], rest])
    return pd.DataFrame({"value": counts.index.astype(str), "real": _shares(counts["real"].to_numpy(), len(r)),
                         "generated": _shares(counts["generated"].to_numpy(), len(f))})


# --- the entry point ----------------------------------------------------------------------------------

def evaluate_table(real_train: pd.DataFrame, real_test: pd.DataFrame, synthetic: pd.DataFrame,
                   schema: TableSchema, *, plots_dir: Path | None = None, seed: int = 0,
                   evaluators: list[str] | None = None) -> dict:
    """The chosen table evaluators (default: all) as one flat dict for metrics/eval.json; those that cannot
    run here (no target, too few rows, no plots folder) are listed under `skipped_evaluators`."""
    names = list(TABLE_EVALUATORS) if evaluators is None else evaluators
    unknown = [name for name in names if name not in TABLE_EVALUATORS]
    if unknown:
        raise ValueError(f"table evaluators: unknown {unknown} (known: {sorted(TABLE_EVALUATORS)})")
    _check_columns({"training": real_train, "test": real_test, "synthetic": synthetic}, schema)
    # The modelled columns only: identifiers and personal data are generated afresh, never compared.
    real_train, real_test, synthetic = (frame[schema.names] for frame in (real_train, real_test, synthetic))
    ctx = TableEvalContext(real_train.reset_index(drop=True), real_test.reset_index(drop=True),
                           synthetic.reset_index(drop=True), schema, plots_dir, seed)
    metrics, skipped = {}, []
    for name in names:
        try:
            metrics |= TABLE_EVALUATORS[name](ctx)
        except NotApplicable:
            skipped.append(name)
    if skipped:
        metrics["skipped_evaluators"] = ", ".join(skipped)
    return metrics
