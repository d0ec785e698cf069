"""What a table's columns are: reading a table from csv / parquet, inferring column kinds, overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pandas.api import types as ptypes

from gan_core.tables.personal import DROP, PERSONAL_KINDS, PersonalSpec, detect, personal_spec

KINDS = ("continuous", "integer", "categorical", "boolean", "datetime")  # what the model learns
DISCRETE = ("categorical", "boolean")
# Every kind prepare.columns may set: the modelled ones, the generated ones (gan_core.tables.personal) and drop.
ALL_KINDS = (*KINDS, *PERSONAL_KINDS, DROP)


class TableError(ValueError):
    """A table, column or schema that cannot be used; the message names the file or column."""


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str
    nullable: bool


@dataclass(frozen=True)
class TableSchema:
    """The modelled columns (`columns`), the generated ones (`personal`: identifiers and personal data, never
    modelled) and the generated rows' column order (`order`; the dropped columns are in none of them)."""

    columns: tuple[ColumnSpec, ...]
    target: str | None
    condition: str | None
    personal: tuple[PersonalSpec, ...] = ()
    order: tuple[str, ...] = ()  # empty: the modelled columns' order
    dropped: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """The modelled columns' names."""
        return [c.name for c in self.columns]

    @property
    def output_names(self) -> list[str]:
        """Every column of a generated row, in the table's order."""
        return list(self.order) or self.names

    def personal_kinds(self) -> dict[str, str]:
        """{column: kind} of the generated columns, then the dropped ones as "drop": what a manifest shows."""
        return {p.name: p.kind for p in self.personal} | {name: DROP for name in self.dropped}

    def column(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise TableError(f"column {name!r} is not in the table (columns: {self.names})")

    def to_json(self) -> dict:
        return {"columns": [{"name": c.name, "kind": c.kind, "nullable": c.nullable} for c in self.columns],
                "target": self.target, "condition": self.condition,
                "personal": [p.to_json() for p in self.personal], "order": list(self.output_names),
                "dropped": list(self.dropped)}

    @classmethod
    def from_json(cls, d: dict) -> TableSchema:
        columns = tuple(ColumnSpec(str(c["name"]), str(c["kind"]), bool(c["nullable"])) for c in d["columns"])
        for c in columns:
            if c.kind not in KINDS:
                raise TableError(f"schema: column {c.name!r} has unknown kind {c.kind!r} (kinds: {', '.join(KINDS)})")
        personal = tuple(PersonalSpec.from_json(p) for p in d.get("personal") or ())
        return cls(columns, d.get("target"), d.get("condition"), personal, tuple(d.get("order") or ()),
                   tuple(d.get("dropped") or ()))


def read_table(path: Path) -> pd.DataFrame:
    """A .csv file, a .parquet file or a folder of .parquet files (read in name order) as one DataFrame."""
    path = Path(path)
    try:
        if path.is_dir():
            parts = sorted(p for p in path.iterdir() if p.suffix == ".parquet" and not p.name.startswith(("_", ".")))
            if not parts:
                raise TableError(f"{path}: a folder without .parquet files")
            return pd.concat([_read_one(p) for p in parts], ignore_index=True)
        return _read_one(path)
    except FileNotFoundError:
        raise TableError(f"{path}: not found") from None


def _read_one(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path)
        elif path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            raise TableError(f"{path}: a table source must be a .csv, a .parquet or a folder of .parquet files")
    except (ValueError, OSError) as exc:
        if isinstance(exc, (TableError, FileNotFoundError)):
            raise
        raise TableError(f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if df.empty or not len(df.columns):
        raise TableError(f"{path}: no rows or no columns")
    if len(set(map(str, df.columns))) != len(df.columns):
        raise TableError(f"{path}: column names must be distinct")
    return df


def infer_kind(series: pd.Series) -> str:
    """The kind a column's values suggest; overrides decide where this guesses wrong."""
    values = series.dropna()
    if ptypes.is_bool_dtype(series.dtype) or (len(values) and values.map(type).isin([bool]).all()):
        return "boolean"
    if ptypes.is_datetime64_any_dtype(series.dtype):
        return "datetime"
    if ptypes.is_integer_dtype(series.dtype):
        return "integer"
    if ptypes.is_float_dtype(series.dtype):
        # An integer column with missing values reads as float.
        return "integer" if len(values) and (values == values.round()).all() and values.abs().max() < 2**53 \
            else "continuous"
    if is_text(series) and len(values) and _iso_dates(values.astype(str)):
        return "datetime"
    return "categorical"


def is_text(series: pd.Series) -> bool:
    """Strings, held as object (pandas 2) or as the `str` / `string` dtype (pandas 3 reads CSV text so)."""
    if ptypes.is_string_dtype(series.dtype) and not isinstance(series.dtype, pd.CategoricalDtype):
        return bool(series.dropna().map(type).eq(str).all())
    return False


def _iso_dates(values: pd.Series) -> bool:
    sample = values.iloc[:200]
    if not sample.str.match(r"^\d{4}-\d{2}-\d{2}").all():
        return False
    try:
        pd.to_datetime(values, format="ISO8601")
    except (ValueError, TypeError):
        return False
    return True


def infer_schema(df: pd.DataFrame, overrides: dict[str, str] | None = None, target: str | None = None,
                 condition: str | None = None) -> TableSchema:
    """Kinds of every column of `df`, with `overrides` (name -> kind) over the guesses. Identifiers and
    personal data are found by name and values (gan_core.tables.personal) and never modelled.

    `condition` None: the target when that is categorical or boolean, else no condition.
    """
    overrides = dict(overrides or {})
    names = [str(c) for c in df.columns]
    for name, kind in overrides.items():
        if name not in names:
            raise TableError(f"prepare.columns: no column {name!r} in the table (columns: {names})")
        if kind not in ALL_KINDS:
            raise TableError(f"prepare.columns: {name!r} has unknown kind {kind!r} (kinds: {', '.join(ALL_KINDS)})")
    for key, name in (("target", target), ("condition", condition)):
        if name is not None and name not in names:
            raise TableError(f"prepare.{key}: no column {name!r} in the table (columns: {names})")
    columns, personal, dropped = [], [], []
    for name, col in zip(names, df.columns):
        kind, why = overrides.get(name), "set in prepare.columns"
        if kind is None:
            kind, why = detect(df[col], name) or (infer_kind(df[col]), "")
        if kind == DROP:
            dropped.append(name)
        elif kind in PERSONAL_KINDS:
            personal.append(personal_spec(df[col], name, kind, why))
        else:
            columns.append(ColumnSpec(name, kind, bool(df[col].isna().any())))
    kinds = {c.name: c.kind for c in columns} | {p.name: p.kind for p in personal} | dict.fromkeys(dropped, DROP)
    for key, name in (("target", target), ("condition", condition)):
        if name is not None and kinds[name] in (*PERSONAL_KINDS, DROP):
            raise TableError(f"prepare.{key}: column {name!r} is {kinds[name]} (personal data or an identifier, "
                             f"never modelled); set prepare.columns: {{{name}: categorical}} to model it")
    if not columns:
        raise TableError(f"no column left to model: all of {names} are identifiers, personal data or dropped; "
                         "set a kind for some in prepare.columns")
    if condition is None and target is not None and kinds[target] in DISCRETE:
        condition = target
    if condition is not None and kinds[condition] not in DISCRETE:
        raise TableError(f"prepare.condition: column {condition!r} is {kinds[condition]}; "
                         "condition on a categorical or boolean column")
    order = tuple(name for name in names if name not in dropped)
    return TableSchema(tuple(columns), target, condition, tuple(personal), order, tuple(dropped))
