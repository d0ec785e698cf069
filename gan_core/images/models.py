"""The seed article's generator and discriminator, sized from ModelConfig and the data's shape."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gan_core.config import ModelConfig

BASE_RESOLUTION = 4  # the linear projection's feature map is 4x4; each decoder block doubles it
MAX_WIDTH = 512  # StyleGAN2's cap: at 64x64 the discriminator's doubling would reach 1,024 channels


@dataclass(frozen=True)
class DataShape:
    resolution: int
    channels: int
    num_classes: int  # 0: unconditional

    @property
    def num_blocks(self) -> int:
        blocks = math.log2(self.resolution / BASE_RESOLUTION)
        if blocks < 1 or blocks != int(blocks):
            raise ValueError(f"resolution must be a power of two >= 8 (got {self.resolution})")
        return int(blocks)


class PixelNorm(nn.Module):
    # Per-sample normalisation (ProGAN): unlike BatchNorm, a sample does not depend on its
    # batch-mates, so every sample regenerates from its seed alone.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


def _normalised_act(channels: int, norm: str) -> list[nn.Module]:
    """PixelNorm after the activation, or BatchNorm before it as in DCGAN (statistics of the batch in
    training, running ones in eval mode: see standing_statistics)."""
    return [nn.BatchNorm2d(channels), _act()] if norm == "batch" else [_act(), PixelNorm()]


class MappingNetwork(nn.Module):
    """The seed's encoder and latent-space mapper: z (and a class embedding) -> latent code w."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, cfg.latent_dim) if num_classes else None
        width = cfg.latent_dim * (2 if self.embed is not None else 1)
        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(cfg.mapping_layers):
            layers += [nn.Linear(width, cfg.mapping_dim), _act()]
            width = cfg.mapping_dim
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z)


class DecoderBlock(nn.Module):
    """Doubles resolution: a transposed convolution plus the seed's "growing" upsample-and-convolve path."""

    def __init__(self, in_channels: int, out_channels: int, grow_kernel: int = 3, refine: bool = True,
                 norm: str = "pixel"):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
        upsample = nn.Upsample(scale_factor=2, mode="nearest")
        if grow_kernel == 1:  # a 1x1 convolution commutes with nearest upsampling: run it on the small map
            self.grow = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), upsample)
        else:
            self.grow = nn.Sequential(upsample, nn.Conv2d(in_channels, out_channels, grow_kernel,
                                                          padding=grow_kernel // 2))
        layers = _normalised_act(out_channels, norm)
        if refine:
            layers += [nn.Conv2d(out_channels, out_channels, 3, padding=1), *_normalised_act(out_channels, norm)]
        self.refine = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Summing the learned deconvolution with nearest upsampling damps checkerboard artefacts.
        return self.refine(self.deconv(x) + self.grow(x))


def _block_widths(first: int, count: int, shrink: bool) -> list[int]:
    return [max(first // 2**i, 16) if shrink else min(first * 2**i, MAX_WIDTH) for i in range(count + 1)]


class Generator(nn.Module):
    """z -> mapping network -> linear projection to 4x4 -> decoder blocks -> image in [-1, 1]."""

    def __init__(self, cfg: ModelConfig, shape: DataShape):
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.num_classes = shape.num_classes if cfg.conditional else 0
        widths = _block_widths(cfg.g_channels, shape.num_blocks, shrink=True)
        self.mapping = MappingNetwork(cfg, self.num_classes)
        self.project = nn.Linear(cfg.mapping_dim, widths[0] * BASE_RESOLUTION**2)
        self.first = nn.Sequential(*_normalised_act(widths[0], cfg.g_norm))
        self.decoder = nn.Sequential(*(DecoderBlock(a, b, cfg.grow_kernel, cfg.refine, cfg.g_norm)
                                       for a, b in zip(widths, widths[1:])))
        self.to_image = nn.Conv2d(widths[-1], shape.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesize(self.mapping(z, labels))

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        """The mapping network's output w -> image: generation's truncation trick moves w in between."""
        x = self.project(w).view(len(w), -1, BASE_RESOLUTION, BASE_RESOLUTION)
        # In the convolutions' memory layout from the first feature map on: a channels-last
        # upsample ran 20x faster than one on a contiguous map fed to channels-last convolutions.
        x = x.contiguous(memory_format=memory_format_of(self.to_image.weight))
        return torch.tanh(self.to_image(self.decoder(self.first(x))))


@torch.no_grad()
def standing_statistics(generator: Generator, seed: int, batches: int = 100, batch_size: int = 64) -> None:
    """BigGAN's standing statistics: a generator's BatchNorm running statistics recomputed for its own weights,
    averaged over BATCHES training-size batches of fresh latents (classes cycling). An EMA generator needs them:
    the live G's running statistics describe the live weights, not the average. Nothing to do without BatchNorm."""
    norms = [module for module in generator.modules() if isinstance(module, nn.BatchNorm2d)]
    if not norms:
        return
    device, training = generator.project.weight.device, generator.training
    noise = torch.Generator(device).manual_seed(seed)
    labels = torch.arange(batch_size, device=device) % generator.num_classes if generator.num_classes else None
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the batches below
    generator.train()
    for _ in range(batches):
        generator(torch.randn(batch_size, generator.latent_dim, generator=noise, device=device), labels)
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    generator.train(training)


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation taken within each class: one more feature map, the spread
    of the batch's samples of a sample's class, so that D can tell a generator that repeats itself
    within a class (over the whole batch, the spread between classes hides it). Under torchrun each
    rank takes it over its own part of the batch.

    In eval mode (scoring one row, rejection sampling) a sample is judged as if its class's samples
    were as spread as real ones: the running mean, per class, of the statistic over the real batches
    D has trained on, as BatchNorm keeps running statistics, so a score depends on the sample alone.
    """

    def __init__(self, num_classes: int, momentum: float = 0.01):
        super().__init__()
        self.num_classes, self.momentum, self.observing = max(num_classes, 1), momentum, False
        self.register_buffer("real_spread", torch.zeros(self.num_classes))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        classes = labels if labels is not None else torch.zeros(len(x), dtype=torch.long, device=x.device)
        spread = self.class_spread(x, classes)[classes] if self.training else self.real_spread[classes]
        return torch.cat([x, spread.to(x.dtype).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])], dim=1)

    def class_spread(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Per class: the standard deviation of its samples, averaged over features (0 for fewer than 2)."""
        members = F.one_hot(classes, self.num_classes).float()  # rows x classes
        sizes = members.sum(dim=0)
        counts = sizes.clamp(min=1).unsqueeze(1)
        flat = x.float().flatten(1)
        means = members.T @ flat / counts
        variance = members.T @ (flat - means[classes]).square() / counts
        spread = (variance + 1e-8).sqrt().mean(dim=1)
        if self.observing:
            with torch.no_grad():  # classes with two or more samples in this real batch
                seen = sizes >= 2
                self.real_spread[seen] = self.real_spread[seen].lerp(spread[seen].detach(), self.momentum)
        return spread


class Discriminator(nn.Module):
    """Feature layers -> hidden layer -> one logit of "real" (1 = real, 0 = generated)."""

    def __init__(self, cfg: ModelConfig, shape: DataShape):
        super().__init__()
        self.num_classes = shape.num_classes if cfg.conditional else 0
        widths = _block_widths(cfg.d_channels, shape.num_blocks, shrink=False)
        sn = spectral_norm if cfg.d_spectral_norm else (lambda layer: layer)
        if cfg.d_stem:  # a full-resolution 3x3 layer before the strided ones
            layers: list[nn.Module] = [sn(nn.Conv2d(shape.channels, widths[0], 3, padding=1)), _act()]
        else:  # the first strided layer reads the image, as DCGAN's does
            layers, widths = [], [shape.channels, *widths[:-1]]
        for index, (a, b) in enumerate(zip(widths, widths[1:])):
            # BatchNorm as DCGAN's: on every layer but the one that reads the image. Real and generated
            # batches go through D apart, so each layer sees its batch's statistics.
            reads_image = index == 0 and not cfg.d_stem
            norm = [nn.BatchNorm2d(b)] if cfg.d_norm == "batch" and not reads_image else []
            layers += [sn(nn.Conv2d(a, b, 4, stride=2, padding=1)), *norm, _act()]
        self.features = nn.Sequential(*layers)
        self.minibatch_std = MinibatchStd(self.num_classes) if cfg.minibatch_std else None
        in_hidden = (widths[-1] + bool(cfg.minibatch_std)) * BASE_RESOLUTION**2
        self.hidden = nn.Sequential(sn(nn.Linear(in_hidden, cfg.d_hidden)), _act())
        self.output = sn(nn.Linear(cfg.d_hidden, 1))
        # Projection discriminator (Miyato & Koyama 2018): the class enters as an inner product.
        self.embed = sn(nn.Embedding(self.num_classes, cfg.d_hidden)) if self.num_classes else None
        if self.embed is not None and not cfg.d_spectral_norm:  # N(0, 1) rows would swamp the logit at the start
            nn.init.normal_(self.embed.weight, 0.0, cfg.d_hidden**-0.5)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images)
        if self.minibatch_std is not None:
            h = self.minibatch_std(h, labels)
        h = self.hidden(h.flatten(1))
        logit = self.output(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(dim=1)
        return logit

    @contextmanager
    def observing_real(self) -> Iterator[None]:
        """Forward passes within are on real images: the minibatch-std layer updates its real spread.

        A context rather than a method that calls forward, so that under DDP the call still goes
        through the wrapper's forward (which prepares the gradient all-reduce)."""
        layer = self.minibatch_std
        if layer is None:
            yield
            return
        layer.observing = True
        try:
            yield
        finally:
            layer.observing = False


def memory_format_of(weight: torch.Tensor) -> torch.memory_format:
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
