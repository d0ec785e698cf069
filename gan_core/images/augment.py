"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) so a small dataset does not let D memorise."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its side, filling with zeros (mid-grey)."""
    n, _, h, w = x.shape
    limit = max(1, int(h * ratio + 0.5))
    shift = torch.randint(-limit, limit + 1, (2, n, 1, 1), generator=generator, device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + shift[0] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + shift[1] + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of `ratio` of the side at a random place in each image."""
    n, _, h, w = x.shape
    size = max(1, int(h * ratio + 0.5))
    corner = torch.randint(0, h - size + 1, (2, n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= corner[0]) & (rows < corner[0] + size) & (cols >= corner[1]) & (cols < corner[1] + size))
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor, generator: torch.Generator, cutout_ratio: float = 0.5) -> torch.Tensor:
    shifted = translate(x, generator)
    return cutout(shifted, generator, cutout_ratio) if cutout_ratio else shifted
