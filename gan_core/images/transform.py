"""Square images of one size: prepare.transform (pad, center-crop, resize) at prepare.resolution."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

TRANSFORMS = ("pad", "center-crop", "resize")
MIN_RESOLUTION = 8  # the models' smallest: a 4x4 projection and one decoder block
RESAMPLE = Image.Resampling.LANCZOS  # one fixed filter: the same bytes on every run of a Pillow version


def squared_side(height: int, width: int, transform: str) -> int:
    """The side of the square an image becomes before any scaling."""
    return min(height, width) if transform == "center-crop" else max(height, width)


def pick_resolution(largest_side: int, resolution: int | str) -> int:
    """`auto`: the smallest power of two that holds the largest squared image (at least MIN_RESOLUTION)."""
    if resolution != "auto":
        return int(resolution)
    return max(MIN_RESOLUTION, 1 << (largest_side - 1).bit_length())


def background(image: np.ndarray) -> np.ndarray:
    """Median of the outermost pixels, per channel: black around MNIST-like items, white around product photos.

    Padding with it extends the image's own background instead of drawing bars the generator must learn.
    """
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return np.rint(np.median(border, axis=0)).astype(np.uint8)


def _padded(image: np.ndarray, side: int, fill: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    canvas = np.empty((side, side, *image.shape[2:]), dtype=np.uint8)
    canvas[...] = fill
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top:top + height, left:left + width] = image
    return canvas


def _scaled(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), RESAMPLE))


def fit_square(image: np.ndarray, resolution: int, transform: str) -> np.ndarray:
    """One (H, W) or (H, W, 3) uint8 image as resolution x resolution, same channels."""
    height, width = image.shape[:2]
    if height == width == resolution:
        return image
    if transform == "center-crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return _scaled(image[top:top + side, left:left + side], resolution, resolution)
    if transform == "resize":  # fit inside, aspect kept, then pad
        scale = resolution / max(height, width)
        fitted = _scaled(image, max(1, round(width * scale)), max(1, round(height * scale)))
        return _padded(fitted, resolution, background(image))
    side = max(height, width, resolution)  # pad; scaled down only when larger than the resolution
    return _scaled(_padded(image, side, background(image)), resolution, resolution)


def show_progress() -> bool:
    return sys.stderr.isatty()


def fill_images(images: Iterable[np.ndarray], count: int, channels: int, resolution: int, transform: str,
                label: str) -> np.ndarray:
    """Each (H, W) or (H, W, 3) image squared straight into one preallocated (count, C, R, R) uint8 array.

    Grey images in an RGB dataset become RGB (the grey value in all three channels).
    """
    out = np.empty((count, channels, resolution, resolution), dtype=np.uint8)
    for index, image in enumerate(tqdm(images, total=count, desc=label, unit="img", disable=not show_progress())):
        image = fit_square(image, resolution, transform)
        out[index] = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return out


def square_array(images: np.ndarray, resolution: int | str, transform: str, label: str) -> np.ndarray:
    """(N, C, H, W) uint8 images, squared; returned as they are when already square at the resolution."""
    height, width = images.shape[-2:]
    target = pick_resolution(squared_side(height, width, transform), resolution)
    if height == width == target:
        return images
    rows = (image[0] if len(image) == 1 else image.transpose(1, 2, 0) for image in images)
    return fill_images(rows, len(images), images.shape[1], target, transform, label)
