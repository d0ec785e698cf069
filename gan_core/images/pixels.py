"""Pixel scaling between stored images (uint8 0..255) and the networks' range (float -1..1).

Its own module because the evaluator network's cache key hashes the code that decides its weights
(`features.TRAINING_CODE`): with the scaling in `models.py`, any change to the GAN retrained it.
"""

from __future__ import annotations

import torch


def to_unit_range(images) -> torch.Tensor:
    """uint8 0..255 -> float -1..1, the generator's tanh range."""
    return torch.as_tensor(images).float().div_(127.5).sub_(1.0)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> the uint8 pixels their PNGs hold: clamped, scaled to 0..255, rounded."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
