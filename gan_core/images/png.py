"""PNG encoding of a batch of small images: one zlib stream each, without a per-image library round trip."""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type: greyscale, truecolour


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_batch(pixels: np.ndarray, level: int = 6) -> list[bytes]:
    """uint8 (N, H, W, C), C = 1 or 3 -> one 8-bit PNG file per image.

    Pillow spends about 0.2 ms of Python and C set-up per 8x8 image, ten times the compression
    itself; here the rows of the whole batch are laid out at once (filter type 0, as every PNG
    decoder reads) and each image is one zlib call.
    """
    count, height, width, channels = pixels.shape
    header = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0))
    trailer = _chunk(b"IEND", b"")
    rows = np.zeros((count, height, 1 + width * channels), dtype=np.uint8)  # a 0 filter byte starts each row
    rows[:, :, 1:] = pixels.reshape(count, height, width * channels)
    return [header + _chunk(b"IDAT", zlib.compress(image.tobytes(), level)) + trailer for image in rows]
