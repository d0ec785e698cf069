"""Reversible row encoding: mode-specific normalisation for numbers and dates, one-hot for categories.

As CTGAN (rdt's ClusterBasedNormalizer + OneHotEncoder), but with its fitted state held as plain JSON
numbers: rdt's transformers are stored by pickling the fitted objects, and checkpoints here are
safetensors + JSON only, never pickle. sklearn's BayesianGaussianMixture does the fitting; only its
weights, means and standard deviations are kept.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from gan_core.tables.schema import DISCRETE, TableError, TableSchema

WEIGHT_THRESHOLD = 0.005  # a mixture component lighter than this is dropped (CTGAN's value)
# A number column with at most this many distinct values is encoded as categories (one-hot) and restored
# as the same numbers: ratings, counts and years come back exactly and their frequencies are learnt directly,
# where a mixture plus rounding blurs neighbouring values into each other.
DISCRETE_NUMBERS = 20  # and at most a fifth of the known values: a short continuous column stays continuous
GMM_FIT_ROWS = 5000  # the mixture is fitted on at most this many values of a column: minutes saved on big tables
STATE_FORMAT = "ganforge-table-transform/1"
MAX_DECIMALS = 10  # a column needing more decimals is not rounded
# Numbers are modelled as the logit of their place inside the training range widened by this share (or half
# a rounding step): values always come back inside the range, without the pile-up at its ends that clipping
# made (18 % of rows at the minimum age where the real table has 2 %). SDV's anchor: rdt's LogitScaler.
BOUND_MARGIN = 0.01


@dataclass(frozen=True)
class Span:
    start: int
    width: int
    activation: str  # "tanh" | "softmax"
    column: str
    role: str = "value"  # "value" (tanh scalar), "mode" (mixture component), "null" (indicator), "category"


def _scalar(value):
    """A category as a JSON value: numpy scalars become Python ones, anything else its string."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, (str, bool, int, float)) or value is None else str(value)


def text_date_format(series: pd.Series) -> str | None:
    """The strftime format most of a text date column's values are written in (None: no single one)."""
    from pandas.tseries.api import guess_datetime_format

    sample = series.dropna().astype(str).iloc[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dayfirst" hints: the format found is what counts
        formats = sample.map(guess_datetime_format).dropna()
    return str(formats.mode().iloc[0]) if len(formats) else None


def parse_dates(series: pd.Series, fmt: str | None = None) -> pd.Series:
    """A datetime column as datetime64: itself, or its text parsed (FMT, ISO 8601, then any format pandas reads)."""
    if ptypes.is_datetime64_any_dtype(series.dtype):
        return series
    text = series.astype("object").where(series.notna(), None)
    for attempt in ([fmt] if fmt else []) + ["ISO8601", "mixed"]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pd.to_datetime(text, format=attempt, utc=True)
        except (ValueError, TypeError):
            continue
    bad = next((v for v in text.dropna() if pd.isna(pd.to_datetime(v, errors="coerce"))), None)
    raise TableError(f"column {series.name!r}: {bad!r} is not a date; set prepare.columns: {{{series.name}: "
                     "categorical} or fix the value")


def _as_seconds(series: pd.Series, fmt: str | None = None) -> np.ndarray:
    """A datetime column (datetime64 or date text) as float seconds since 1970 UTC; NaN where missing."""
    stamps = parse_dates(series, fmt)
    if getattr(stamps.dt, "tz", None) is None:
        stamps = stamps.dt.tz_localize("UTC")
    ns = stamps.astype("datetime64[ns, UTC]").astype("int64").to_numpy().astype(np.float64)
    return np.where(stamps.isna().to_numpy(), np.nan, ns / 1e9)


def numeric_values(series: pd.Series, kind: str, date_format: str | None = None) -> np.ndarray:
    """A continuous, integer or datetime column as float64, NaN where missing."""
    if kind == "datetime":
        return _as_seconds(series, date_format)
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()


def fit_mixture(values: np.ndarray, max_components: int, seed: int) -> dict:
    """A Bayesian GMM over one column's non-missing values, as JSON numbers (standardised space)."""
    from sklearn.mixture import BayesianGaussianMixture

    values = values[~np.isnan(values)]
    if not len(values):
        values = np.zeros(1)
    center, scale = float(values.mean()), float(values.std()) or 1.0
    z = (values - center) / scale
    if len(z) > GMM_FIT_ROWS:
        z = np.random.default_rng(seed).choice(z, GMM_FIT_ROWS, replace=False)
    n_components = max(1, min(max_components, len(np.unique(z))))
    if n_components == 1:
        weights, means, stds = [1.0], [float(z.mean())], [max(float(z.std()), 1e-3)]
    else:
        gmm = BayesianGaussianMixture(n_components=n_components, weight_concentration_prior_type="dirichlet_process",
                                      weight_concentration_prior=0.001, max_iter=100, n_init=1, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on tiny columns: the fit is still usable
            gmm.fit(z.reshape(-1, 1))
        keep = gmm.weights_ > WEIGHT_THRESHOLD
        weights = (gmm.weights_[keep] / gmm.weights_[keep].sum()).tolist()
        means = gmm.means_[keep, 0].tolist()
        stds = np.maximum(np.sqrt(gmm.covariances_[keep].reshape(-1)), 1e-3).tolist()
    return {"center": center, "scale": scale, "weights": weights, "means": means, "stds": stds,
            "min": float(values.min()), "max": float(values.max())}


def learn_decimals(values: np.ndarray) -> int | None:
    """The fewest decimals that write every value exactly (rdt's learn_rounding_scheme); None: more than MAX_DECIMALS."""
    finite = values[np.isfinite(values)]
    for decimals in range(MAX_DECIMALS + 1):
        if np.array_equal(np.round(finite, decimals), finite):
            return decimals
    return None


def value_step(col: dict) -> float | None:
    """The spacing of a numeric column's values: a day or a second for dates, 10^-decimals, None when unrounded."""
    if col["kind"] == "datetime":
        return 86400.0 if col["unit"] == "D" else 1.0
    return None if col.get("decimals") is None else 10.0 ** -col["decimals"]


def open_bounds(low: float, high: float, step: float | None) -> list[float]:
    """An open interval around [low, high] that the logit maps to the whole line: half a step beyond each end
    (what rounds to the end value), at least BOUND_MARGIN of the range (so the ends are not extreme logits)."""
    margin = max((step or 0.0) / 2, (high - low) * BOUND_MARGIN) or max(abs(low) * 1e-6, 1e-6)
    return [low - margin, high + margin]


def to_logit(values: np.ndarray, bounds: list[float]) -> np.ndarray:
    from scipy.special import logit

    low, high = bounds
    return logit(np.clip((values - low) / (high - low), 1e-12, 1 - 1e-12))


def from_logit(y: np.ndarray, bounds: list[float]) -> np.ndarray:
    from scipy.special import expit

    low, high = bounds
    return low + (high - low) * expit(y)


def _fit_numeric(series: pd.Series, kind: str, max_components: int, seed: int) -> dict:
    """A number or date column's rounding, bounds and mixture (fitted on the logit of its place in the bounds)."""
    col: dict = {"kind": kind}
    if kind == "datetime" and not ptypes.is_datetime64_any_dtype(series.dtype):
        col |= {"as_text": True, "text_format": text_date_format(series)}
    values = numeric_values(series, kind, col.get("text_format"))
    seen = values[~np.isnan(values)]
    if kind == "datetime":
        col["unit"] = "D" if len(seen) and np.all(seen % 86400 == 0) else "s"
    else:
        col["decimals"] = 0 if kind == "integer" else learn_decimals(seen)
    low, high = (float(seen.min()), float(seen.max())) if len(seen) else (0.0, 0.0)
    col["bounds"] = open_bounds(low, high, value_step(col))
    mixture = fit_mixture(to_logit(values, col["bounds"]), max_components, seed)
    del col["kind"]
    return col | mixture | {"min": low, "max": high}


class TableTransformer:
    """DataFrame <-> float32 matrix; spans say which activation each slice of the matrix takes."""

    def __init__(self, columns: list[dict]):
        self.columns = columns  # one JSON dict per column, in the table's order
        self.spans: list[Span] = []
        start = 0
        for col in columns:
            for width, activation, role in _column_layout(col):
                self.spans.append(Span(start, width, activation, col["name"], role))
                start += width
        self.width = start

    # --- fitting and state ---------------------------------------------------------------------

    @classmethod
    def fit(cls, df: pd.DataFrame, schema: TableSchema, max_components: int = 10, seed: int = 0) -> TableTransformer:
        columns = []
        for spec in schema.columns:
            if spec.name not in df.columns:
                raise TableError(f"column {spec.name!r} of the schema is not in the table")
            series = df[spec.name]
            col = {"name": spec.name, "kind": spec.kind, "dtype": str(series.dtype),
                   "nullable": bool(spec.nullable or series.isna().any())}
            if str(series.dtype) == "category":
                col["dtype_categories"] = [_scalar(v) for v in series.cat.categories]
            numbers = spec.kind in ("integer", "continuous")
            distinct, known = series.dropna().nunique(), int(series.notna().sum())
            if spec.kind in DISCRETE or (numbers and distinct <= min(DISCRETE_NUMBERS, max(2, known // 5))):
                counts = series.dropna().value_counts(sort=False)
                col["categories"] = [_scalar(v) for v in counts.index]
                col["counts"] = [int(n) for n in counts.to_numpy()] + ([int(series.isna().sum())] if col["nullable"] else [])
            else:
                col |= _fit_numeric(series, spec.kind, max_components, seed)
            columns.append(col)
        return cls(columns)

    def state(self) -> dict:
        return {"format": STATE_FORMAT, "columns": self.columns}

    @classmethod
    def from_state(cls, state: dict) -> TableTransformer:
        if state.get("format") != STATE_FORMAT:
            raise TableError(f"transformer state: format {state.get('format')!r} is not {STATE_FORMAT!r}")
        return cls([dict(c) for c in state["columns"]])

    @property
    def discrete_spans(self) -> list[Span]:
        """The category spans, one per categorical or boolean column: what the conditional vector covers."""
        return [s for s in self.spans if s.role == "category"]

    def category_counts(self, column: str) -> np.ndarray:
        return np.asarray(self._column(column)["counts"], dtype=np.float64)

    def category_index(self, column: str, value) -> int:
        """Index of VALUE in the column's category span (None / NaN: the null category)."""
        col = self._column(column)
        if _is_null(value):
            if not col["nullable"]:
                raise TableError(f"column {column!r}: no missing values in training, cannot condition on one")
            return len(col["categories"])
        lookup = {_key(c): i for i, c in enumerate(col["categories"])}
        try:
            return lookup[_key(_scalar(value))]
        except KeyError:
            raise TableError(f"column {column!r}: {value!r} is not one of its categories "
                             f"{col['categories'][:20]}") from None

    def _column(self, name: str) -> dict:
        for col in self.columns:
            if col["name"] == name:
                return col
        raise TableError(f"column {name!r} is not in the table")

    # --- encoding ------------------------------------------------------------------------------

    def transform(self, df: pd.DataFrame, seed: int = 0) -> np.ndarray:
        """Rows -> float32 (n, width). A value's mixture component is drawn by its posterior, as CTGAN
        does; `seed` makes that draw repeatable."""
        rng = np.random.default_rng(seed)
        parts = []
        for col in self.columns:
            if col["name"] not in df.columns:
                raise TableError(f"column {col['name']!r} is missing from the table")
            series = df[col["name"]]
            parts.append(_encode_discrete(col, series) if "categories" in col else _encode_numeric(col, series, rng))
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(df), 0), np.float32)

    def decode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Matrix -> per column: float values (NaN: missing; datetimes as seconds) or category codes (-1: missing)."""
        x = np.asarray(x, dtype=np.float64)
        out, spans = {}, iter(self.spans)
        for col in self.columns:
            layout = _column_layout(col)
            own = [next(spans) for _ in layout]
            if "categories" in col:
                s = own[0]
                codes = x[:, s.start:s.start + s.width].argmax(axis=1)
                out[col["name"]] = np.where(codes >= len(col["categories"]), -1, codes)
            else:
                value, mode = own[0], own[1]
                k = x[:, mode.start:mode.start + mode.width].argmax(axis=1)
                u = np.clip(x[:, value.start], -1.0, 1.0)
                z = u * 4 * np.asarray(col["stds"])[k] + np.asarray(col["means"])[k]
                v = _from_model_space(col, z * col["scale"] + col["center"])
                if col["nullable"]:
                    n = own[2]
                    v = np.where(x[:, n.start + 1] > x[:, n.start], np.nan, v)
                out[col["name"]] = v
        return out

    def inverse(self, x: np.ndarray) -> pd.DataFrame:
        """Matrix -> rows with the original column names, order and dtypes."""
        decoded = self.decode(x)
        return pd.DataFrame({col["name"]: _restore(col, decoded[col["name"]]) for col in self.columns},
                            columns=[col["name"] for col in self.columns])


def _from_model_space(col: dict, y: np.ndarray) -> np.ndarray:
    """Mixture-space values -> the column's numbers: inside its bounds, rounded as its values are, within [min, max]."""
    if "bounds" not in col:  # a model saved before bounds: clipped, integers and dates rounded
        v = np.clip(y, col["min"], col["max"])
        if col["kind"] == "integer":
            return np.round(v)
        return (np.round(v / 86400) * 86400 if col["unit"] == "D" else np.round(v)) if col["kind"] == "datetime" else v
    v = from_logit(y, col["bounds"])
    step = value_step(col)
    if col["kind"] == "datetime":
        v = np.round(v / step) * step
    elif step is not None:
        v = np.round(v, col["decimals"])
    return np.clip(v, col["min"], col["max"]) + 0.0  # + 0.0: no "-0.0" from rounding


def _is_null(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _key(value):
    # True == 1 in a dict: keep booleans apart from the numbers 0 and 1.
    return (type(value) is bool, value)


def _column_layout(col: dict) -> list[tuple[int, str, str]]:
    if "categories" in col:
        return [(len(col["categories"]) + int(col["nullable"]), "softmax", "category")]
    layout = [(1, "tanh", "value"), (len(col["weights"]), "softmax", "mode")]
    return layout + ([(2, "softmax", "null")] if col["nullable"] else [])


def _encode_discrete(col: dict, series: pd.Series) -> np.ndarray:
    categories = col["categories"]
    lookup = {_key(c): i for i, c in enumerate(categories)}
    width = len(categories) + int(col["nullable"])
    # A category unseen in fitting (e.g. only in the validation rows) encodes as the most frequent one.
    fallback = int(np.argmax(col["counts"][:len(categories)])) if categories else 0
    null = series.isna().to_numpy()
    codes = np.array([len(categories) if n else lookup.get(_key(_scalar(v)), fallback)
                      for v, n in zip(series.to_numpy(dtype=object), null)], dtype=np.int64)
    if not col["nullable"]:
        codes = np.where(null, fallback, codes)
    out = np.zeros((len(series), width), np.float64)
    out[np.arange(len(series)), codes] = 1.0
    return out


def _encode_numeric(col: dict, series: pd.Series, rng: np.random.Generator) -> np.ndarray:
    values = numeric_values(series, col["kind"], col.get("text_format"))
    null = np.isnan(values)
    if "bounds" in col:
        values = to_logit(values, col["bounds"])
    z = (np.where(null, col["center"], values) - col["center"]) / col["scale"]
    means, stds, weights = (np.asarray(col[k]) for k in ("means", "stds", "weights"))
    log_p = np.log(weights) - 0.5 * ((z[:, None] - means) / stds) ** 2 - np.log(stds)
    p = np.exp(log_p - log_p.max(axis=1, keepdims=True)) + 1e-6
    p /= p.sum(axis=1, keepdims=True)
    k = (p.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)
    u = np.clip((z - means[k]) / (4 * stds[k]), -0.99, 0.99)
    parts = [u[:, None], np.eye(len(means))[k]]
    if col["nullable"]:
        parts.append(np.stack([~null, null], axis=1).astype(np.float64))
    return np.concatenate(parts, axis=1)


def _restore(col: dict, values: np.ndarray) -> pd.Series:
    dtype = col["dtype"]
    if "categories" in col:
        cats = np.empty(len(col["categories"]) + 1, dtype=object)
        cats[:-1] = col["categories"]
        cats[-1] = None
        series = pd.Series(cats[values], dtype=object)
        if dtype == "category":
            return series.astype(pd.CategoricalDtype(col.get("dtype_categories") or col["categories"]))
        return series if dtype == "object" else _astype(series, dtype, col)
    if col["kind"] == "datetime":
        stamps = pd.Series(pd.to_datetime(values, unit="s", utc=True))
        if col.get("as_text"):
            fmt = col.get("text_format") or ("%Y-%m-%d" if col["unit"] == "D" else "%Y-%m-%d %H:%M:%S")
            text = pd.Series(np.where(stamps.isna(), None, stamps.dt.strftime(fmt)), dtype=object)
            return text if dtype == "object" else _astype(text, dtype, col)
        tz = pd.DatetimeTZDtype(tz=dtype.split(", ", 1)[1].rstrip("]")) if ", " in dtype else None
        stamps = stamps.dt.tz_convert(tz.tz) if tz is not None else stamps.dt.tz_localize(None)
        return _astype(stamps, dtype, col)
    return _astype(pd.Series(values), dtype, col)


def _astype(series: pd.Series, dtype: str, col: dict) -> pd.Series:
    try:
        return series.astype(dtype)
    except (TypeError, ValueError):
        # e.g. int64 with generated missing values: the nullable twin keeps the integers.
        nullable = {"int64": "Int64", "int32": "Int32", "int16": "Int16", "int8": "Int8", "bool": "boolean"}
        if dtype in nullable:
            return series.astype(nullable[dtype])
        return series
