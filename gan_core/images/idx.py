"""MNIST's IDX format (images idx3 + labels idx1, gzipped or not), read with numpy."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from gan_core.errors import DataError

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # unsigned bytes, 3 or 1 dimensions
IDX_NAME = re.compile(r".*(-ubyte|\.idx)(\.gz)?")


def is_idx_images(path: Path) -> bool:
    return path.is_file() and bool(IDX_NAME.fullmatch(path.name)) and "labels" not in path.name \
        and "idx1" not in path.name


def images_file_in(folder: Path) -> Path | None:
    """The IDX images file of a folder: its only one, or its `train-` one beside others (Fashion-MNIST's t10k)."""
    found = sorted(p for p in folder.iterdir() if is_idx_images(p))
    if len(found) > 1:
        found = [p for p in found if p.name.startswith("train")] or found
    if len(found) > 1:
        raise DataError(f"{folder}: several IDX image files ({', '.join(p.name for p in found)}): "
                        "name one in prepare.source")
    return found[0] if found else None


def labels_file_for(images: Path) -> Path | None:
    """train-images-idx3-ubyte -> train-labels-idx1-ubyte beside it, gzipped or not."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1").removesuffix(".gz")
    return next((p for p in (images.with_name(name), images.with_name(name + ".gz")) if p.is_file()), None)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array of an IDX file, read straight into one writable uint8 array."""
    with path.open("rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            return _read_body(handle, path, magic)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable {'gzip' if gzipped else 'IDX'} file ({exc})") from None


def _read_body(handle, path: Path, magic: int) -> np.ndarray:
    what = "images (idx3)" if magic == IMAGES_MAGIC else "labels (idx1)"
    ndim = magic & 0xFF
    head = handle.read(4 + 4 * ndim)
    if len(head) >= 4 and int.from_bytes(head[:4], "big") != magic:
        raise DataError(f"{path}: not an IDX {what} file (magic 0x{int.from_bytes(head[:4], 'big'):08x}, "
                        f"expected 0x{magic:08x})")
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated: {len(head)} bytes, shorter than an IDX {what} header")
    dims = tuple(int(d) for d in np.frombuffer(head, ">u4", ndim, 4))
    data = np.empty(dims, dtype=np.uint8)
    view, filled = memoryview(data).cast("B"), 0
    while filled < data.size and (got := handle.readinto(view[filled:])):
        filled += got
    if filled < data.size:
        raise DataError(f"{path}: truncated: {filled} of the {data.size} bytes its header announces "
                        f"({' x '.join(map(str, dims))})")
    if handle.read(1):
        raise DataError(f"{path}: more bytes than its header announces ({' x '.join(map(str, dims))})")
    return data


def read_idx_pair(images_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) images and int64 labels (-1 each when no labels file lies beside the images)."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels_path = labels_file_for(images_path)
    if labels_path is None:
        return images, np.full(len(images), -1, dtype=np.int64)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}")
    return images, labels.astype(np.int64)
