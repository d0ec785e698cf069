"""The reference: the same GAN step written the plain PyTorch way (pytorch/examples dcgan).

A Dataset with per-sample transforms behind a DataLoader, float32, default memory layout, the
default (per-parameter) Adam, the EMA as a Python loop. Same models, losses, augmentation, batch
and data as ganforge's step, so a ratio against it measures the implementation, not the algorithm.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from gan_core.config import Params
from gan_core.images.augment import diff_augment
from gan_core.images.models import DataShape, Discriminator, Generator


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor on a uint8 (C, H, W) array: float 0..1."""
    return torch.from_numpy(array).contiguous().to(torch.float32).div(255)


def normalize(x: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """torchvision's Normalize: per-channel mean and std tensors, applied per sample."""
    channels = x.shape[0]
    m = torch.as_tensor([mean] * channels, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor([std] * channels, dtype=x.dtype).view(-1, 1, 1)
    return x.sub(m).div(s)


class ImageDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return normalize(to_tensor(self.images[index])), int(self.labels[index])


class ReferenceGan:
    """One training step per call of `step()`, as a plain loop over a DataLoader would run it."""

    def __init__(self, params: Params, shape: DataShape, images: np.ndarray, labels: np.ndarray,
                 device: torch.device, workers: int = 0):
        cfg = self.cfg = params.train
        torch.manual_seed(cfg.seed)
        self.device, self.conditional = device, shape.num_classes > 0
        self.netG = Generator(params.model, shape).to(device)
        self.netD = Discriminator(params.model, shape).to(device)
        self.ema = Generator(params.model, shape).to(device)
        self.ema.load_state_dict(self.netG.state_dict())
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        loader = DataLoader(ImageDataset(images, labels), batch_size=cfg.batch_size, shuffle=True,
                            drop_last=True, num_workers=workers, persistent_workers=workers > 0)
        self.batches = itertools.chain.from_iterable(itertools.repeat(loader))

    def step(self) -> dict[str, float]:
        cfg, netG, netD = self.cfg, self.netG, self.netD
        real, labels = next(self.batches)
        real, labels = real.to(self.device), labels.to(self.device)
        labels = labels if self.conditional else None
        b = real.size(0)
        # (1) Update D: maximise log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        noise = torch.randn(b, netG.latent_dim, device=self.device, generator=self.noise)
        fake = netG(noise, labels)
        output_real = netD(diff_augment(real, self.noise, cfg.cutout), labels)
        errD_real = F.binary_cross_entropy_with_logits(output_real, torch.full((b,), 1 - cfg.label_smoothing,
                                                                          device=self.device))
        errD_real.backward()
        output_fake = netD(diff_augment(fake.detach(), self.noise, cfg.cutout), labels)
        errD_fake = F.binary_cross_entropy_with_logits(output_fake, torch.zeros(b, device=self.device))
        errD_fake.backward()
        self.optD.step()
        # (2) Update G: maximise log(D(G(z))) with fresh noise, as ganforge's G step draws it
        netG.zero_grad()
        noise = torch.randn(b, netG.latent_dim, device=self.device, generator=self.noise)
        output = netD(diff_augment(netG(noise, labels), self.noise, cfg.cutout), labels)
        errG = F.binary_cross_entropy_with_logits(output, torch.ones(b, device=self.device))
        errG.backward()
        self.optG.step()
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), netG.parameters()):
                p_ema.mul_(cfg.ema_decay).add_(p, alpha=1 - cfg.ema_decay)
        return {"d_loss": (errD_real + errD_fake).item(), "g_loss": errG.item(),
                "d_real": torch.sigmoid(output_real).mean().item()}
