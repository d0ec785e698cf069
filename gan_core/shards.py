"""Seeds and shards both kinds share: every sample regenerates from its seed; a shard is named by its index, which owns a range of seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_BITS = 24  # candidates per shard: seeds of shard k are (base << 40) | (k << 24) | j


Quota = list[tuple[int | None, int]]  # (class, rows) of one shard; class None: every class in turn


def shard_seeds(base_seed: int, shard: int, start: int, count: int) -> np.ndarray:
    if not 0 <= base_seed < 2**23 or not 0 <= shard < 2**16 or start + count > 2**SHARD_BITS:
        raise ValueError(f"seed space exhausted: seed={base_seed}, shard={shard}, candidates={start + count}")
    return (base_seed << 40) | (shard << SHARD_BITS) | np.arange(start, start + count, dtype=np.int64)


def candidates_through(seed: int) -> int:
    """Candidates of a shard's stream up to and including `seed`: its position in the stream, plus one."""
    return int(seed & ((1 << SHARD_BITS) - 1)) + 1


def stream_positions(seeds: np.ndarray) -> np.ndarray:
    """Each seed's position in its shard's stream (0 for the first candidate)."""
    return np.asarray(seeds, dtype=np.int64) & ((1 << SHARD_BITS) - 1)


def class_seeds(base_seed: int, shard: int, label: int | None, num_classes: int, start: int, count: int) -> np.ndarray:
    """Candidates start.. of a shard's stream for class `label`: its seeds whose implied label
    (seed % num_classes) is `label`, so each sample still regenerates from its seed alone. None: every seed."""
    if label is None:
        return shard_seeds(base_seed, shard, start, count)
    offset = (label - int(shard_seeds(base_seed, shard, 0, 1)[0])) % num_classes
    return shard_seeds(base_seed, shard, offset + start * num_classes, count * num_classes)[::num_classes]


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_sizes(num_samples: int, shard_size: int) -> list[int]:
    count = math.ceil(num_samples / shard_size)
    return [min(shard_size, num_samples - i * shard_size) for i in range(count)]


def shard_quotas(num_samples: int, shard_size: int, class_counts: dict[int, int] | None) -> list[Quota]:
    """Each shard's (class, rows): every class in turn, or each requested class spread evenly over the shards."""
    sizes = shard_sizes(num_samples, shard_size)
    if class_counts is None:
        return [[(None, rows)] for rows in sizes]
    classes = np.repeat(list(class_counts), list(class_counts.values()))
    # Class k's j-th sample sits (j + 0.5) / n_k of the way through the dataset; shards cut that order.
    order = np.argsort(np.concatenate([(np.arange(n) + 0.5) / n for n in class_counts.values()]), kind="stable")
    bounds = np.cumsum([0, *sizes])
    return [[(int(k), int(n)) for k, n in zip(*np.unique(classes[order[a:b]], return_counts=True))]
            for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class ShardResult:
    index: int
    path: Path
    rows: int
    candidates: int
    class_counts: dict[str, int]  # rows per class index (as a string, as in JSON); empty when unconditional
