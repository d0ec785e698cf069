"""Batch generation for tables: seeded rows, discriminator scores, optional rejection, Parquet shards.

A shard holds the user's columns with the dtypes they were prepared with, plus the row's seed and
d_score under names free in the user's table (`seed`, else `_seed`, `__seed`, ...). Shards are planned,
written and summarised as for images (gan_core.images.generate), so the flows fan them out the same way.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gan_core.config import ConfigError, GenerateConfig
from gan_core.rejection import RejectionRule, fit_rejection_rule, logit_to_score
from gan_core.shards import Quota, ShardResult, class_seeds, shard_name, shard_quotas, shard_seeds
from gan_core.tables.sampling import TableModel, sample_rows

# 1: the user's columns and dtypes, then the added `seed` (int64) and `d_score` (float64) columns.
TABLE_SCHEMA_VERSION = 1
ADDED = ("seed", "d_score")
BURN_IN_SHARD = 2**16 - 1  # as images: the last shard index is reserved for the rejection rule's burn-in
COIN = 0xC017  # a second seed word: a row's rejection coin, independent of the noise its seed draws


def added_columns(columns: list[str]) -> dict[str, str]:
    """{"seed": name, "d_score": name}: each the plain name, or with '_' prefixed until the table has no such column."""
    taken, names = set(map(str, columns)), {}
    for base in ADDED:
        name = base
        while name in taken:
            name = "_" + name
        names[base] = taken_name = name
        taken.add(taken_name)
    return names


def condition_categories(model: TableModel) -> list:
    """The condition column's values in the model's order (None last: a missing value); [] when unconditional."""
    condition = model.schema.condition
    if condition is None:
        return []
    column = next(c for c in model.transformer.columns if c["name"] == condition)
    return list(column["categories"]) + ([None] if column["nullable"] else [])


def category_text(value) -> str:
    return "null" if value is None else str(value)


def category_counts(model: TableModel, class_counts: dict | None, key: str = "generate.class_counts") -> dict | None:
    """{condition value (or its text, as params give it): count} -> {category index: count}."""
    if class_counts is None:
        return None
    texts = [category_text(v) for v in condition_categories(model)]
    if not texts:
        raise ConfigError(f"{key}: the model has no condition column (prepare.condition); leave {key} out")
    counts = {}
    for value, count in class_counts.items():
        if category_text(value) not in texts:
            raise ConfigError(f"{key}: {value!r} is not a value of column {model.schema.condition!r} "
                              f"(its values: {', '.join(texts)})")
        counts[texts.index(category_text(value))] = count
    return dict(sorted(counts.items()))


def plan_table_shards(model: TableModel, cfg: GenerateConfig) -> list[Quota]:
    if cfg.truncation != 1.0:
        raise ConfigError(f"generate.truncation: a table model has no truncation trick; set it to 1.0 "
                          f"(got {cfg.truncation})")
    return shard_quotas(cfg.num_samples, cfg.shard_size, category_counts(model, cfg.class_counts))


def coins(seeds: np.ndarray) -> np.ndarray:
    """Each row's uniform(0, 1) for the rejection decision, from its seed alone."""
    return np.array([np.random.default_rng([int(s), COIN]).random() for s in seeds.tolist()])


def rows_for(model: TableModel, seeds: np.ndarray, label: int | None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows, discriminator logits and category index per row (-1 when unconditional) for `seeds`.

    label: a category index the rows are conditioned on; None: the condition drawn from each seed.
    """
    categories = condition_categories(model)
    values = None if label is None else [categories[label]] * len(seeds)
    frame, logits = sample_rows(model, seeds, values)
    if not categories:
        return frame, logits, np.full(len(seeds), -1)
    if label is not None:
        return frame, logits, np.full(len(seeds), label)
    texts = [category_text(v) for v in categories]
    held = frame[model.schema.condition].astype("object").where(frame[model.schema.condition].notna(), None)
    return frame, logits, np.array([texts.index(category_text(v)) for v in held])


def table_rejection_rule(model: TableModel, cfg: GenerateConfig) -> RejectionRule | None:
    """The rejection rule at cfg.rejection.target_acceptance from burn-in rows of a reserved seed range;
    per category of the condition column (each sampled as such) when per_class, so the mix is kept."""
    if not cfg.rejection.enabled:
        return None
    categories = condition_categories(model)
    if not (cfg.rejection.per_class and categories):
        seeds = shard_seeds(cfg.seed, BURN_IN_SHARD, 0, cfg.rejection.burn_in)
        return fit_rejection_rule(sample_rows(model, seeds)[1], cfg.rejection.target_acceptance)
    per = max(1, cfg.rejection.burn_in // len(categories))
    logits = [rows_for(model, shard_seeds(cfg.seed, BURN_IN_SHARD, k * per, per), k)[1]
              for k in range(len(categories))]
    return fit_rejection_rule(np.concatenate(logits), cfg.rejection.target_acceptance,
                              np.repeat(np.arange(len(categories)), per))


def shard_schema(model: TableModel, added: dict[str, str]) -> pa.Schema:
    """The Arrow schema of every shard: the prepared rows' own (with their pandas dtypes) plus the added columns."""
    base = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(model.meta["arrow_schema"])))
    pandas_meta = json.loads(base.metadata[b"pandas"])
    pandas_meta["columns"] += [
        {"name": added["seed"], "field_name": added["seed"], "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": added["d_score"], "field_name": added["d_score"], "pandas_type": "float64",
         "numpy_type": "float64", "metadata": None}]
    fields = [*base, pa.field(added["seed"], pa.int64()), pa.field(added["d_score"], pa.float64())]
    return pa.schema(fields, metadata={b"pandas": json.dumps(pandas_meta).encode()})


def _arrow_rows(frame: pd.DataFrame, seeds: np.ndarray, logits: np.ndarray, added: dict[str, str],
                schema: pa.Schema) -> pa.Table:
    frame = frame.copy()
    frame[added["seed"]] = seeds.astype(np.int64)
    frame[added["d_score"]] = logit_to_score(logits)  # the probability of "real", as for images
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    return table.replace_schema_metadata(schema.metadata)


def _shard_rows(model: TableModel, index: int, quota: Quota, cfg: GenerateConfig, rule: RejectionRule | None):
    """(rows, seeds, logits, category per row, candidates examined) per batch of shard `index`'s quota."""
    num_classes = len(condition_categories(model))
    for label, rows in quota:
        kept = drawn = 0
        while kept < rows:
            want = min(rows - kept if rule is None else cfg.batch_size, cfg.batch_size)
            seeds = class_seeds(cfg.seed, index, label, num_classes, drawn, want)
            frame, logits, labels = rows_for(model, seeds, label)
            keep = np.arange(len(seeds))
            if rule is not None:
                keep = np.flatnonzero(coins(seeds) < rule.accept_probability(logits, labels if num_classes else None))
            keep = keep[:rows - kept]
            drawn, kept = drawn + len(seeds), kept + len(keep)
            # Once the quota fills, the candidates after the last one kept were never examined.
            examined = int(keep[-1]) + 1 if kept == rows and len(keep) else len(seeds)
            yield frame.iloc[keep].reset_index(drop=True), seeds[keep], logits[keep], labels[keep], examined


def generate_table_shard(model: TableModel, index: int, quota: Quota, cfg: GenerateConfig,
                         rule: RejectionRule | None, out_dir: Path) -> ShardResult:
    """Write shard `index` with exactly its quota of rows; its seeds are its own, so shards run in any order."""
    path = Path(out_dir) / shard_name(index)
    tmp = path.with_name(f".{path.name}.tmp")
    added = added_columns(model.schema.output_names)
    schema = shard_schema(model, added)
    texts = [category_text(v) for v in condition_categories(model)]
    per_class, candidates = Counter(), 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for frame, seeds, logits, labels, examined in _shard_rows(model, index, quota, cfg, rule):
                candidates += examined
                if len(seeds):
                    writer.write_table(_arrow_rows(frame, seeds, logits, added, schema))
                    per_class.update(texts[k] for k in labels.tolist() if k >= 0)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return ShardResult(index, path, sum(rows for _, rows in quota), candidates, dict(per_class))


def summarize_table(results: list[ShardResult], rule: RejectionRule | None, cfg: GenerateConfig,
                    model: TableModel) -> dict:
    """What the manifest records about a table's shards (as gan_core.images.generate.summarize, keyed by value)."""
    rows, candidates = sum(r.rows for r in results), sum(r.candidates for r in results)
    rejection = {"enabled": rule is not None} | cfg.rejection.model_dump(exclude={"enabled"})
    if rule is not None:
        rejection |= {"max_logit": list(rule.max_logit), "gamma": list(rule.gamma)}
    per_class = sum((Counter(r.class_counts) for r in results), Counter())
    order = [category_text(v) for v in condition_categories(model)]
    return {"sample_count": rows, "candidates": candidates, "acceptance_rate": rows / candidates,
            "rejection": rejection, "shard_files": [str(r.path) for r in sorted(results, key=lambda r: r.index)],
            "class_counts": {k: per_class[k] for k in order if per_class[k]} or None, "truncation": cfg.truncation,
            "schema_version": TABLE_SCHEMA_VERSION, "kind": "table",
            "added_columns": added_columns(model.schema.output_names), "columns": model.schema.output_names,
            "personal_columns": model.schema.personal_kinds()}


def generate_table_dataset(model: TableModel, cfg: GenerateConfig, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rule = table_rejection_rule(model, cfg)
    results = [generate_table_shard(model, i, quota, cfg, rule, out_dir)
               for i, quota in enumerate(plan_table_shards(model, cfg))]
    return summarize_table(results, rule, cfg, model)
