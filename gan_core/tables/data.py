"""Prepared tables: a CSV/Parquet source -> data/prepared/<dataset>.npz (three splits as Parquet bytes), and back.

The .npz holds no pickle: `kind` ("table"), `schema` (TableSchema JSON), `class_names` (the condition
column's values, as text) and per split `<split>_rows`, the rows as Parquet bytes in a uint8 array, so
that the user's column names and dtypes survive exactly. An image .npz has no `kind` key.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gan_core.errors import DataError

TABLE_SUFFIXES = (".csv", ".parquet")
SPLITS = ("train", "validation", "test")


def is_table_source(source: str | None) -> bool:
    """A .csv or .parquet file, or a folder holding .parquet files (a folder of images is not)."""
    if not source:
        return False
    path = Path(source)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return True
    return path.is_dir() and any(p.suffix.lower() == ".parquet" for p in path.iterdir())


def prepared_kind(path: Path) -> str:
    """"table" or "image": what a prepared .npz holds (an image one, as written before tables, has no `kind`)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: prepared dataset not found; run the prepare stage first")
    with np.load(path, allow_pickle=False) as npz:
        return str(npz["kind"]) if "kind" in npz.files else "image"


@dataclass(frozen=True)
class PreparedTable:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    schema: object  # gan_core.tables.schema.TableSchema
    class_names: list[str]  # the condition column's values as text; empty when unconditional

    def splits(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def frame_bytes(frame: pd.DataFrame) -> np.ndarray:
    """The rows as Parquet bytes (a uint8 array): exact dtypes and any column names, no pickle."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def bytes_frame(array: np.ndarray) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(np.ascontiguousarray(array).tobytes()), engine="pyarrow")


def stratum_codes(frame: pd.DataFrame, column: str | None) -> np.ndarray:
    """One code per row: its value of `column` (missing values a stratum of their own); 0s without a column."""
    if column is None:
        return np.zeros(len(frame), dtype=np.int64)
    codes, _ = pd.factorize(frame[column].astype("object"), use_na_sentinel=False)
    return codes.astype(np.int64)


def split_rows(codes: np.ndarray, validation_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Per row 0 (train), 1 (validation) or 2 (test), seeded and stratified by `codes`.

    As gan_core.images.data.split_parts for images, except that a value too rare to reach every split is
    allowed (tables often have rare categories): only each split as a whole must be non-empty.
    """
    rng = np.random.default_rng(seed)
    part = np.zeros(len(codes), dtype=np.int8)
    for code in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == code))
        held = int(round(len(members) * (validation_fraction + test_fraction)))
        test = int(round(len(members) * test_fraction))
        part[members[:held - test]], part[members[held - test:held]] = 1, 2
    counts = np.bincount(part, minlength=3)
    if counts.min() == 0:
        raise DataError(f"{len(codes)} distinct rows are too few to split with prepare.validation_fraction="
                        f"{validation_fraction} and prepare.test_fraction={test_fraction} (train, validation, "
                        f"test: {counts.tolist()} rows)")
    return part


def condition_names(frame: pd.DataFrame, column: str | None) -> list[str]:
    if column is None:
        return []
    return sorted({str(value) for value in frame[column].dropna().unique()})


def prepare_table(source: str, out_path: Path, validation_fraction: float, test_fraction: float, seed: int,
                  columns: dict[str, str] | None = None, target: str | None = None,
                  condition: str | None = None, test_source: str | None = None) -> dict:
    """Read, infer the schema (params' overrides first), drop exact duplicate rows, split three ways, save."""
    from gan_core.tables.schema import infer_schema, read_table

    frame = read_table(Path(source))
    schema = infer_schema(frame, overrides=columns or {}, target=target, condition=condition)
    check_dates(frame, schema)
    official = read_table(Path(test_source)).drop_duplicates(ignore_index=True) if test_source else None
    if official is not None and list(official.columns) != list(frame.columns):
        raise DataError(f"prepare.test_source: {test_source} has columns {list(official.columns)}, "
                        f"prepare.source {source} {list(frame.columns)}")
    distinct = frame.drop_duplicates(ignore_index=True)
    if official is not None:  # a row of the official test split never trains
        seen = distinct.merge(official.drop_duplicates(), how="left", indicator=True)["_merge"] == "both"
        distinct = distinct[~seen.to_numpy()].reset_index(drop=True)
        official = integers_as_integers(official, schema)[schema.names]
    # The personal and dropped columns go here: their values never reach the prepared splits.
    distinct = integers_as_integers(distinct, schema)[schema.names]
    if official is None:
        part = split_rows(stratum_codes(distinct, schema.condition), validation_fraction, test_fraction, seed)
    else:
        part = _two_way(distinct, schema.condition, validation_fraction, seed)
    splits = {name: distinct[part == index].reset_index(drop=True) for index, name in enumerate(SPLITS)}
    if official is not None:
        splits["test"] = official.astype(distinct.dtypes.to_dict(), errors="ignore")
    names = condition_names(distinct, schema.condition)
    save_prepared_table(Path(out_path), splits, schema, names)
    return {"kind": "table", **{name: len(rows) for name, rows in splits.items()},
            "duplicates_removed": len(frame) - len(distinct), "columns": len(schema.output_names),
            "condition": schema.condition, "target": schema.target, "classes": len(names),
            **personal_summary(schema)}


def personal_summary(schema) -> dict:
    """What the prepare log says of the columns that are generated, not modelled (kinds and reasons, no values)."""
    if not (schema.personal or schema.dropped):
        return {}
    found = {p.name: f"{p.kind} ({p.why})" for p in schema.personal} | {name: "dropped" for name in schema.dropped}
    return {"personal_columns": found,
            "personal_note": "identifiers and personal data: never modelled, generated afresh (Faker, fresh keys); "
                             "set prepare.columns: {NAME: KIND} to change a kind, or drop"}


def check_dates(frame: pd.DataFrame, schema) -> None:
    """Every datetime column parses (text in any one format pandas reads): else an error naming the value and fix."""
    from gan_core.tables.transform import parse_dates

    for spec in schema.columns:
        if spec.kind == "datetime":
            parse_dates(frame[spec.name])


def integers_as_integers(frame: pd.DataFrame, schema) -> pd.DataFrame:
    """Integer columns held as floats (a CSV column with gaps reads as float64) as pandas' nullable Int64: the
    generated rows then hold 42, not 42.0."""
    floats = [c.name for c in schema.columns if c.kind == "integer" and pd.api.types.is_float_dtype(frame[c.name])]
    return frame.astype({name: "Int64" for name in floats}) if floats else frame


def _two_way(frame: pd.DataFrame, column: str | None, validation_fraction: float, seed: int) -> np.ndarray:
    # With an official test split only train and validation come from the source.
    rng = np.random.default_rng(seed)
    codes, part = stratum_codes(frame, column), np.zeros(len(frame), dtype=np.int8)
    for code in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == code))
        part[members[:int(round(len(members) * validation_fraction))]] = 1
    if not (part == 0).any() or not (part == 1).any():
        raise DataError(f"{len(frame)} distinct rows are too few to split with prepare.validation_fraction="
                        f"{validation_fraction}")
    return part


def save_prepared_table(path: Path, splits: dict[str, pd.DataFrame], schema, class_names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}_rows": frame_bytes(splits[name]) for name in SPLITS}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, kind=np.array("table"), schema=np.array(json.dumps(schema.to_json(), sort_keys=True)),
                 class_names=np.array(class_names, dtype=np.str_), **arrays)
    os.replace(tmp, path)


def load_prepared_table(path: Path) -> PreparedTable:
    from gan_core.tables.schema import TableSchema

    if prepared_kind(path) != "table":
        raise DataError(f"{path}: holds images, not a table; run the prepare stage again")
    with np.load(path, allow_pickle=False) as npz:
        frames = {name: bytes_frame(npz[f"{name}_rows"]) for name in SPLITS}
        schema = TableSchema.from_json(json.loads(str(npz["schema"])))
        names = [str(name) for name in npz["class_names"].tolist()]
    return PreparedTable(**frames, schema=schema, class_names=names)


def arrow_schema_text(frame: pd.DataFrame, schema=None) -> str:
    """The Arrow schema the rows of `frame` are stored with (pandas metadata included), as base64 text for JSON;
    with the table's `schema`, its generated (personal) columns too, in the table's order."""
    import base64

    import pyarrow as pa

    if schema is not None and schema.personal:
        from gan_core.tables.personal import complete_rows

        frame = complete_rows(frame.head(0), schema.output_names, schema.personal, np.zeros(0, np.int64))
    return base64.b64encode(pa.Schema.from_pandas(frame, preserve_index=False).serialize().to_pybytes()).decode()
