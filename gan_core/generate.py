"""Batch generation: seeded samples, discriminator scores, optional rejection, streamed to Parquet shards."""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gan_core.config import GenerateConfig
from gan_core.png import encode_batch
from gan_core.progress import progress_bar
from gan_core.sampling import (RejectionRule, SampleBatch, TrainedModel, accept, fit_to_model, generate_and_score,
                               logit_to_score, shard_seeds)

SCHEMA = pa.schema([
    pa.field("image", pa.binary(), nullable=False),   # PNG bytes
    pa.field("label", pa.int64(), nullable=False),    # -1 when unconditional
    pa.field("seed", pa.int64(), nullable=False),     # regenerates the sample alone
    pa.field("d_score", pa.float64(), nullable=False),  # discriminator probability of "real"
])


class OutOfSpaceError(OSError):
    """The disk filled up while writing a shard; the message names the file and the space left."""


def encode_png(images) -> list[bytes]:
    """[-1, 1] float images (N, C, H, W) -> PNG bytes, grey or RGB by channel count."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return encode_batch(pixels.permute(0, 2, 3, 1).numpy())


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_sizes(num_samples: int, shard_size: int) -> list[int]:
    count = math.ceil(num_samples / shard_size)
    return [min(shard_size, num_samples - i * shard_size) for i in range(count)]


@dataclass(frozen=True)
class ShardResult:
    index: int
    path: Path
    rows: int
    candidates: int


def _to_table(batch: SampleBatch) -> pa.Table:
    return pa.table({"image": encode_png(batch.images), "label": batch.labels.astype(np.int64),
                     "seed": batch.seeds.astype(np.int64), "d_score": logit_to_score(batch.logits)}, schema=SCHEMA)


def generate_shard(model: TrainedModel, index: int, rows: int, cfg: GenerateConfig,
                   rule: RejectionRule | None, out_dir: Path) -> ShardResult:
    """Write shard `index` with exactly `rows` samples; its seeds are its own, so shards run in any order."""
    path = Path(out_dir) / shard_name(index)
    tmp = path.with_name(f".{path.name}.tmp")
    written = candidates = 0
    bar = progress_bar(rows, f"generate {path.name}", unit="sample")
    try:
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer, InOrderBackground() as background:
            while written < rows:
                # Ask for what is missing, scaled up by the expected acceptance (bounded to one batch).
                want = rows - written if rule is None else cfg.batch_size
                batch = generate_and_score(model, shard_seeds(cfg.seed, index, candidates, min(want, cfg.batch_size)))
                candidates += len(batch.seeds)
                kept = accept(batch, rule)
                kept = kept.select(np.arange(min(len(kept.seeds), rows - written)))
                if len(kept.seeds):
                    # Encoded and written in the background while the next batch is computed.
                    background.submit(lambda batch=kept: writer.write_table(_to_table(batch)))
                    written += len(kept.seeds)
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
    return ShardResult(index, path, written, candidates)


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
    return fit_to_model(model, cfg.rejection, cfg.seed, cfg.batch_size)


def generate_dataset(model: TrainedModel, cfg: GenerateConfig, out_dir: Path) -> dict:
    """All shards of one dataset into `out_dir`; returns what the manifest records about them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rule = rejection_rule(model, cfg)
    results = [generate_shard(model, i, rows, cfg, rule, out_dir)
               for i, rows in enumerate(shard_sizes(cfg.num_samples, cfg.shard_size))]
    return summarize(results, rule, cfg)


def summarize(results: list[ShardResult], rule: RejectionRule | None, cfg: GenerateConfig) -> dict:
    rows = sum(r.rows for r in results)
    candidates = sum(r.candidates for r in results)
    rejection = {"enabled": rule is not None} | cfg.rejection.model_dump(exclude={"enabled"})
    if rule is not None:
        rejection |= {"max_logit": list(rule.max_logit), "gamma": list(rule.gamma)}
    return {"sample_count": rows, "candidates": candidates, "acceptance_rate": rows / candidates,
            "rejection": rejection, "shard_files": [str(r.path) for r in sorted(results, key=lambda r: r.index)]}
