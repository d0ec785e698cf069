"""Batch generation: seeded samples, discriminator scores, optional rejection, streamed to Parquet shards."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gan_core.config import GenerateConfig
from gan_core.images.data import model_class_names
from gan_core.images.pixels import quantise
from gan_core.images.png import encode_batch
from gan_core.images.sampling import SampleBatch, TrainedModel, class_indices, fit_to_model, sample_shard
from gan_core.progress import progress_bar
from gan_core.rejection import RejectionRule, logit_to_score
from gan_core.shards import Quota, ShardResult, shard_name, shard_quotas

# 2: `image` became the Hugging Face `Image` struct {bytes, path} (1 held the PNG bytes themselves)
# and the schema carries the `huggingface` features metadata (ClassLabel names).
SCHEMA_VERSION = 2
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def row_schema(class_names: Sequence[str]) -> pa.Schema:
    """The Parquet schema of one dataset's rows, with the features Hugging Face `datasets` reads.

    `datasets` uses a declared feature only where the Arrow field matches its own exactly: a struct
    {bytes, path} for `Image` (a plain binary column stays bytes) and nullable fields throughout.
    """
    label = ({"names": list(class_names), "_type": "ClassLabel"} if class_names
             else {"dtype": "int64", "_type": "Value"})  # unconditional: -1 throughout
    features = {"image": {"_type": "Image"}, "label": label,
                "seed": {"dtype": "int64", "_type": "Value"}, "d_score": {"dtype": "float64", "_type": "Value"}}
    return pa.schema([
        pa.field("image", IMAGE_TYPE),      # PNG bytes, path always null
        pa.field("label", pa.int64()),      # a class index, -1 when unconditional
        pa.field("seed", pa.int64()),       # regenerates the sample alone
        pa.field("d_score", pa.float64()),  # discriminator probability of "real"
    ], metadata={"huggingface": json.dumps({"info": {"features": features}})})


class OutOfSpaceError(OSError):
    """The disk filled up while writing a shard; the message names the file and the space left."""


def encode_png(images) -> list[bytes]:
    """[-1, 1] float images (N, C, H, W) -> PNG bytes, grey or RGB by channel count."""
    return encode_batch(quantise(images).permute(0, 2, 3, 1).numpy())


def plan_shards(model: TrainedModel, cfg: GenerateConfig) -> list[Quota]:
    counts = None if cfg.class_counts is None else class_indices(model, cfg.class_counts)
    return shard_quotas(cfg.num_samples, cfg.shard_size, counts)


def _to_table(batch: SampleBatch, schema: pa.Schema) -> pa.Table:
    pngs = pa.array(encode_png(batch.images), pa.binary())
    images = pa.StructArray.from_arrays([pngs, pa.nulls(len(pngs), pa.string())], fields=list(IMAGE_TYPE))
    return pa.table({"image": images, "label": batch.labels.astype(np.int64),
                     "seed": batch.seeds.astype(np.int64), "d_score": logit_to_score(batch.logits)}, schema=schema)


def generate_shard(model: TrainedModel, index: int, quota: Quota, cfg: GenerateConfig,
                   rule: RejectionRule | None, out_dir: Path) -> ShardResult:
    """Write shard `index` with exactly its quota of samples; its seeds are its own, so shards run in any order."""
    path = Path(out_dir) / shard_name(index)
    tmp = path.with_name(f".{path.name}.tmp")
    labels, candidates = Counter(), 0
    schema = row_schema(model_class_names(model.meta))
    bar = progress_bar(sum(rows for _, rows in quota), f"generate {path.name}", unit="sample")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer, InOrderBackground() as background:
            for kept, drawn in sample_shard(model, index, quota, cfg.seed, cfg.batch_size, rule, cfg.truncation):
                candidates += drawn
                if len(kept.seeds):
                    # Encoded and written in the background while the next batch is computed.
                    background.submit(lambda batch=kept: writer.write_table(_to_table(batch, schema)))
                    labels.update(kept.labels.tolist())
                    bar.update(len(kept.seeds))
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a partial shard only takes space: nothing reads .tmp files
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(out_dir).free
            raise OutOfSpaceError(f"{path}: no space left on device ({free} bytes free there); "
                                  "free some space and rerun") from None
        raise
    os.replace(tmp, path)
    bar.close()
    per_class = {str(k): n for k, n in sorted(labels.items()) if k >= 0}
    return ShardResult(index, path, labels.total(), candidates, per_class)


class InOrderBackground:
    """Runs submitted calls one at a time on a background thread, in order, with at most `depth` waiting.

    The bound keeps memory flat however many batches a shard has; the single thread keeps the
    output byte-identical to writing in the foreground. An error surfaces at the next submit or at exit.
    """

    def __init__(self, depth: int = 2):
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: deque[Future] = deque()

    def submit(self, call) -> None:
        self._pending.append(self._pool.submit(call))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def __enter__(self) -> InOrderBackground:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            while self._pending and exc_type is None:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def rejection_rule(model: TrainedModel, cfg: GenerateConfig) -> RejectionRule | None:
    if not cfg.rejection.enabled:
        return None
    return fit_to_model(model, cfg.rejection, cfg.seed, cfg.batch_size, cfg.truncation)


def generate_dataset(model: TrainedModel, cfg: GenerateConfig, out_dir: Path) -> dict:
    """All shards of one dataset into `out_dir`; returns what the manifest records about them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rule = rejection_rule(model, cfg)
    results = [generate_shard(model, i, quota, cfg, rule, out_dir) for i, quota in enumerate(plan_shards(model, cfg))]
    return summarize(results, rule, cfg)


def summarize(results: list[ShardResult], rule: RejectionRule | None, cfg: GenerateConfig) -> dict:
    rows = sum(r.rows for r in results)
    candidates = sum(r.candidates for r in results)
    rejection = {"enabled": rule is not None} | cfg.rejection.model_dump(exclude={"enabled"})
    if rule is not None:
        rejection |= {"max_logit": list(rule.max_logit), "gamma": list(rule.gamma)}
    per_class = sum((Counter(r.class_counts) for r in results), Counter())
    return {"sample_count": rows, "candidates": candidates, "acceptance_rate": rows / candidates,
            "rejection": rejection, "shard_files": [str(r.path) for r in sorted(results, key=lambda r: r.index)],
            "class_counts": dict(sorted(per_class.items(), key=lambda item: int(item[0]))) or None,
            "truncation": cfg.truncation, "schema_version": SCHEMA_VERSION}
