"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) so a small dataset does not let D memorise."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125, pad: str = "zeros") -> torch.Tensor:
    """Shift each image by up to `ratio` of its side. pad "zeros" fills the shifted-in band with zeros (mid-grey), as
    DiffAugment does; "reflect" mirrors the image's own edge into it, as StyleGAN2-ADA's geometric augmentations do,
    so that the band looks like the data's border (black around Fashion-MNIST's garments) and not like a new edge."""
    if pad not in ("zeros", "reflect"):
        raise ValueError(f"translate: pad must be 'zeros' or 'reflect' (got {pad!r})")
    n, _, h, w = x.shape
    limit = max(1, int(h * ratio + 0.5))
    shift = torch.randint(-limit, limit + 1, (2, n, 1, 1), generator=generator, device=x.device)
    margin = limit if pad == "reflect" else 1
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + shift[0] + margin).clamp(0, h + 2 * margin - 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + shift[1] + margin).clamp(0, w + 2 * margin - 1)
    padded = F.pad(x, (margin,) * 4, mode="reflect" if pad == "reflect" else "constant")
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


def diff_augment(x: torch.Tensor, generator: torch.Generator, cutout_ratio: float = 0.5,
                 pad: str = "zeros", translate_ratio: float = 0.125, probability: float = 1.0) -> torch.Tensor:
    """Translation by up to `translate_ratio` of the side, then cutout of `cutout_ratio`; a ratio of 0 skips one.
    `probability` < 1 augments each image with that chance and leaves the rest as they are (StyleGAN2-ADA's p,
    fixed): D then still sees some images whole, and what the augmentation draws leaks less into G."""
    shifted = translate(x, generator, translate_ratio, pad) if translate_ratio else x
    augmented = cutout(shifted, generator, cutout_ratio) if cutout_ratio else shifted
    if probability >= 1.0:
        return augmented
    chosen = torch.rand(len(x), generator=generator, device=x.device) < probability
    return torch.where(chosen.view(-1, *[1] * (x.dim() - 1)), augmented, x)
