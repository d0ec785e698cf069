"""Published datasets from Python: a pandas DataFrame, or a PyTorch dataset streamed from S3."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from gan_core.publication.read import get_verified, published_entries
from gan_core.publication.s3 import s3_client


def _bucket(bucket: str | None) -> str:
    from gan_core.layout import bucket_from_env

    return bucket or bucket_from_env()


def read_shard(client, bucket: str, entry: dict) -> pa.Table:
    """One shard as an Arrow table, its bytes checked against the manifest's sha256 first."""
    return pq.read_table(pa.BufferReader(get_verified(client, bucket, entry)))


def load_dataframe(name: str, version: str = "latest", bucket: str | None = None):
    """Every row of a published version as a pandas DataFrame: a table's rows, or images (`image` holds
    {bytes, path} dicts)."""
    bucket = _bucket(bucket)
    client = s3_client()
    _, entries = published_entries(bucket, name, version, client=client)
    return pa.concat_tables([read_shard(client, bucket, entry) for entry in entries]).to_pandas()


def png_bytes(column: pa.Array) -> pa.Array:
    # schema_version 2 holds the Hugging Face Image struct {bytes, path}; versions before it the bytes alone.
    return column.field("bytes") if pa.types.is_struct(column.type) else column


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> float (C, H, W) in [0, 1]."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float().div_(255.0)


class SyntheticImageDataset(IterableDataset):
    """A published version as (image, label) pairs: image a float (C, H, W) tensor in [0, 1], label an int
    (-1 when unconditional), after `transform` (a callable on the image tensor) when given.

    Shards stream from S3 one at a time, each checked against its manifest sha256 before any of its
    rows is used. In a DataLoader with workers each worker reads its own share of the shards, with
    its own S3 client (clients are built lazily, never pickled). `shuffle` reorders shards and rows,
    differently each epoch, following torch's seed.
    """

    def __init__(self, name: str, version: str = "latest", bucket: str | None = None,
                 transform: Callable[[torch.Tensor], object] | None = None, shuffle: bool = False):
        self.bucket = _bucket(bucket)
        self.manifest, self.entries = published_entries(self.bucket, name, version)
        if self.manifest.get("kind") == "table":
            raise ValueError(f"{name} {self.manifest['version']} is a table, not images: read it with "
                             f"gan_core.loader.load_dataframe({name!r}) or pandas.read_parquet")
        self.name, self.version = name, self.manifest["version"]
        self.class_names: list[str] = list(self.manifest.get("class_names") or [])
        self.transform, self.shuffle = transform, shuffle
        self._client, self._client_pid = None, None

    def __len__(self) -> int:
        return sum(entry["rows"] for entry in self.entries)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_client_pid": None}

    def client(self):
        # boto3 clients are neither picklable nor safe across fork: one per process, made on first use.
        if self._client is None or self._client_pid != os.getpid():
            self._client, self._client_pid = s3_client(), os.getpid()
        return self._client

    def _my_shards(self, rng: np.random.Generator | None) -> list[dict]:
        worker = get_worker_info()
        shards = self.entries if worker is None else self.entries[worker.id::worker.num_workers]
        return [shards[i] for i in rng.permutation(len(shards))] if rng is not None else list(shards)

    def __iter__(self) -> Iterator[tuple[object, int]]:
        # Drawn from torch's generator: a new order each epoch, in the main process as in workers
        # (whose generators DataLoader seeds afresh every epoch).
        rng = np.random.default_rng(int(torch.randint(2**62, ()))) if self.shuffle else None
        for entry in self._my_shards(rng):
            table = read_shard(self.client(), self.bucket, entry)
            images = png_bytes(table.column("image").combine_chunks()).to_pylist()
            labels = table.column("label").to_pylist()
            for row in rng.permutation(len(labels)) if rng is not None else range(len(labels)):
                image = decode_png(images[row])
                yield (self.transform(image) if self.transform else image), labels[row]
