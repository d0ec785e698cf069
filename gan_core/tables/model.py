"""The row GAN: the seed's generator (mapping network, linear projection, decoder blocks with a growing
residual path) and a PacGAN discriminator, plus CTGAN's conditional vector over the discrete columns."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_core.config import TableConfig
from gan_core.tables.transform import Span, TableTransformer


class DecoderBlock(nn.Module):
    """A fully connected layer whose input is passed on beside its output (CTGAN's Residual): each block
    grows the width, so later layers see every earlier representation. LayerNorm, not CTGAN's BatchNorm:
    a row must not depend on its batch-mates, or it would not regenerate from its seed alone."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.norm(self.fc(x))), x], dim=1)


class TableGenerator(nn.Module):
    """(z, conditional vector) -> mapping network -> w -> linear projection -> decoder blocks -> raw row."""

    def __init__(self, cfg: TableConfig, cond_dim: int, width: int):
        super().__init__()
        layers: list[nn.Module] = []
        dim = cfg.embedding_dim + cond_dim
        for _ in range(cfg.mapping_layers):
            layers += [nn.Linear(dim, cfg.mapping_dim), nn.LeakyReLU(0.2)]
            dim = cfg.mapping_dim
        self.mapping = nn.Sequential(*layers)
        self.project = nn.Linear(dim + cond_dim, cfg.generator_dims[0] if cfg.generator_dims else dim)
        dim = self.project.out_features
        blocks = []
        for out_dim in cfg.generator_dims:
            blocks.append(DecoderBlock(dim, out_dim))
            dim += out_dim
        self.decoder = nn.Sequential(*blocks)
        self.to_row = nn.Linear(dim, width)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        w = self.mapping(torch.cat([z, cond], dim=1))
        # The condition enters twice: into the mapping and again beside w, so it is never washed out.
        return self.to_row(self.decoder(self.project(torch.cat([w, cond], dim=1))))


class TableDiscriminator(nn.Module):
    """Packs of `pac` rows (with their conditional vectors) -> hidden layers -> one logit of "real"."""

    def __init__(self, cfg: TableConfig, in_dim: int, pac: int):
        super().__init__()
        self.pac = pac
        layers: list[nn.Module] = []
        dim = in_dim * pac
        for hidden in cfg.discriminator_dims:
            layers += [nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(cfg.dropout)]
            dim = hidden
        self.net = nn.Sequential(*layers, nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, x.shape[1] * self.pac)).squeeze(1)


def activate(raw: torch.Tensor, spans: list[Span], tau: float, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """tanh on value spans, Gumbel-softmax on the others (as CTGAN). `uniform`: the Gumbel noise's uniforms,
    one per output, for sampling that regenerates from seeds; None draws them from torch's global RNG."""
    parts = []
    for s in spans:
        logits = raw[:, s.start:s.start + s.width]
        if s.activation == "tanh":
            parts.append(torch.tanh(logits))
        else:
            u = torch.rand_like(logits) if uniform is None else uniform[:, s.start:s.start + s.width]
            gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
            parts.append(torch.softmax((logits + gumbel) / tau, dim=1))
    return torch.cat(parts, dim=1)


class Conditioner:
    """CTGAN's conditional vector: one-hot of one category of one discrete column, and its sampling.

    Training picks a column uniformly and a category by log-frequency (training-by-sampling, so rare
    categories are learnt); generation picks by the real frequency, or takes the value it is given.
    """

    def __init__(self, transformer: TableTransformer, condition: str | None):
        self.spans = transformer.discrete_spans
        self.columns = [s.column for s in self.spans]
        self.offsets = np.cumsum([0] + [s.width for s in self.spans])[:-1].astype(int)
        self.dim = int(sum(s.width for s in self.spans))
        counts = [transformer.category_counts(c) for c in self.columns]
        self.log_p = [_normalise(np.log(c + 1)) for c in counts]
        self.p = [_normalise(c) for c in counts]
        self.condition = self.columns.index(condition) if condition in self.columns else None

    def train_batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cond one-hot (n, dim), column index per row, category index per row)."""
        column = rng.integers(0, len(self.spans), n)
        category = np.zeros(n, dtype=np.int64)
        for c in range(len(self.spans)):
            rows = np.flatnonzero(column == c)
            category[rows] = rng.choice(len(self.log_p[c]), size=len(rows), p=self.log_p[c])
        return self.one_hot(column, category), column, category

    def original(self, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(column, category) per row from two uniforms per row, by real frequency: the condition column
        when there is one, else a column drawn uniformly (as CTGAN's sample)."""
        if self.condition is not None:
            column = np.full(len(uniform), self.condition)
        else:
            column = np.minimum((uniform[:, 0] * len(self.spans)).astype(int), len(self.spans) - 1)
        category = np.array([min(np.searchsorted(np.cumsum(self.p[c]), u, side="right"), len(self.p[c]) - 1)
                             for c, u in zip(column, uniform[:, 1])], dtype=np.int64)
        return column, category

    def one_hot(self, column: np.ndarray, category: np.ndarray) -> np.ndarray:
        cond = np.zeros((len(column), self.dim), np.float32)
        if self.dim:
            cond[np.arange(len(column)), self.offsets[column] + category] = 1.0
        return cond

    def loss(self, raw: torch.Tensor, column: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the generator's logits for the conditioned column against the asked category."""
        if not self.spans:
            return raw.new_zeros(())
        total = raw.new_zeros(len(raw))
        for j, s in enumerate(self.spans):
            chosen = column == j
            ce = F.cross_entropy(raw[:, s.start:s.start + s.width], category.clamp(max=s.width - 1), reduction="none")
            total = total + ce * chosen
        return total.mean()


def _normalise(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
