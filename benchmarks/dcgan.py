"""The plain conditional DCGAN of pytorch/examples (dcgan/main.py) at its standard widths, with an EMA generator."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

NZ, NGF, NDF = 100, 64, 64  # the recipe's latent size and widths
LR, BETAS, BATCH_SIZE = 2e-4, (0.5, 0.999), 64
EMA_DECAY, EMA_WARMUP = 0.999, 3  # the EMA warms up as ganforge's does (gan_core.images.train.update_ema)
STANDING_BATCHES = 100  # batches of BATCH_SIZE that recompute BatchNorm statistics for the EMA weights


def one_hot_maps(labels: torch.Tensor, classes: int, side: int) -> torch.Tensor:
    """The class as `classes` constant channels of side x side."""
    return F.one_hot(labels, classes).float()[:, :, None, None].expand(-1, -1, side, side)


class DcganGenerator(nn.Module):
    """(z, one-hot class) as a 1x1 map -> 4x4 -> ... -> the image; ConvTranspose, BatchNorm, ReLU, tanh."""

    def __init__(self, resolution: int, channels: int, classes: int):
        super().__init__()
        self.classes, self.latent_dim = classes, NZ
        widths = [NGF * 2**k for k in reversed(range(int(math.log2(resolution)) - 2))]  # 32x32: 256, 128, 64
        layers, previous = [], NZ + classes
        for k, width in enumerate(widths):
            layers += [nn.ConvTranspose2d(previous, width, 4, 1 if k == 0 else 2, 0 if k == 0 else 1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(True)]
            previous = width
        self.main = nn.Sequential(*layers, nn.ConvTranspose2d(previous, channels, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.main(torch.cat([z[:, :, None, None], one_hot_maps(labels, self.classes, 1)], 1))


class DcganDiscriminator(nn.Module):
    """(image, one-hot class channels) -> halving Conv, BatchNorm but on the first, LeakyReLU 0.2 -> 4x4 -> logit."""

    def __init__(self, resolution: int, channels: int, classes: int):
        super().__init__()
        self.classes = classes
        layers, previous = [], channels + classes
        for k in range(int(math.log2(resolution)) - 2):  # 32x32: 64, 128, 256 channels at 16, 8, 4
            width = NDF * 2**k
            layers += [nn.Conv2d(previous, width, 4, 2, 1, bias=False), *([nn.BatchNorm2d(width)] if k else []),
                       nn.LeakyReLU(0.2, inplace=True)]
            previous = width
        self.main = nn.Sequential(*layers, nn.Conv2d(previous, 1, 4, 1, 0, bias=False))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        maps = one_hot_maps(labels, self.classes, images.shape[-1])
        return self.main(torch.cat([images, maps], 1)).flatten()


def weights_init(module: nn.Module) -> None:
    """The recipe's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Dcgan:
    """Networks, optimizers and EMA; `step(real, labels)` is one D step and one G step, as dcgan/main.py runs them."""

    def __init__(self, resolution: int, channels: int, classes: int, seed: int, device: str = "cpu"):
        torch.manual_seed(seed)
        self.G = DcganGenerator(resolution, channels, classes).to(device)
        self.D = DcganDiscriminator(resolution, channels, classes).to(device)
        self.G.apply(weights_init)
        self.D.apply(weights_init)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=LR, betas=BETAS)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=LR, betas=BETAS)
        self.noise = torch.Generator(device).manual_seed(seed + 1)
        self.steps = 0

    def step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        # (1) D step: maximise log D(x) + log(1 - D(G(z)))
        fake = self.G(torch.randn(len(real), NZ, generator=self.noise, device=real.device), labels)
        logits_real, logits_fake = self.D(real, labels), self.D(fake.detach(), labels)
        loss_d = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                  + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # (2) G step: maximise log D(G(z)) on the same fake batch
        logits = self.D(fake, labels)
        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.steps += 1
        self.update_ema()
        return {"d_loss": loss_d.item(), "g_loss": loss_g.item()}

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(EMA_DECAY, self.steps / (self.steps + EMA_WARMUP))
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - decay)

    @torch.no_grad()
    def standing_statistics(self, seed: int) -> DcganGenerator:
        """The EMA generator in eval mode, its BatchNorm statistics recomputed for its own weights.

        G's running statistics describe G's weights, not the average's; sampling the average in train mode
        would make each sample depend on its batch. So (BigGAN's standing statistics) the EMA weights run
        STANDING_BATCHES training-size batches with the statistics averaged over all of them, then eval mode.
        """
        device = next(self.G_ema.parameters()).device
        noise = torch.Generator(device).manual_seed(seed)
        for module in self.G_ema.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the batches
        self.G_ema.train()
        for _ in range(STANDING_BATCHES):
            self.G_ema(torch.randn(BATCH_SIZE, NZ, generator=noise, device=device),
                       torch.randint(self.G_ema.classes, (BATCH_SIZE,), generator=noise, device=device))
        return self.G_ema.eval()
