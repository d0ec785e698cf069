"""Seeded sampling from a trained model, discriminator scores, and discriminator rejection sampling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from gan_core import checkpoint as ckpt
from gan_core.config import ConfigError, ModelConfig, RejectionConfig, class_key
from gan_core.images.models import DataShape, Discriminator, Generator
from gan_core.images.pixels import quantise, to_unit_range
from gan_core.rejection import RejectionRule, fit_rejection_rule, logit_to_score
from gan_core.shards import Quota, candidates_through, class_seeds, shard_seeds

# The truncation trick's centre w_avg: the mean mapping output over these latents, per class.
W_AVG_SEED, W_AVG_SAMPLES = 20_261_201, 4096


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

@dataclass
class TrainedModel:
    generator: Generator  # the EMA generator: what sampling uses
    discriminator: Discriminator
    shape: DataShape
    meta: dict

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @cached_property
    @torch.inference_mode()
    def w_avg(self) -> torch.Tensor:
        """The mapping network's mean output, one row per class (the mapping is class-conditional), or one row.

        Computed at generation time rather than stored at export: from a fixed seed and count it depends
        on the weights alone, so every shard (any host, any order) centres on the same w; it takes milliseconds.
        """
        rng = torch.Generator().manual_seed(W_AVG_SEED)
        z = torch.randn(W_AVG_SAMPLES, self.generator.latent_dim, generator=rng).to(self.device)
        classes = [torch.full((W_AVG_SAMPLES,), k, device=self.device) for k in range(self.shape.num_classes)]
        # Averaged in float64 on the CPU (MPS has no float64): the sum's order then follows no device.
        rows = [self.generator.mapping(z, labels).cpu().double().mean(dim=0) for labels in classes or [None]]
        return torch.stack(rows).float().to(self.device)


def load_model(directory: Path | str, device: str | torch.device = "cpu") -> TrainedModel:
    """Load an exported model; safetensors only, every file checked against its recorded sha256."""
    meta = ckpt.read_meta(directory)
    if meta.get("format") != "ganforge-checkpoint/1":
        raise ckpt.CheckpointError(f"{directory}: not a ganforge checkpoint (format {meta.get('format')!r})")
    shape = DataShape(**meta["shape"])
    cfg = ModelConfig(**meta["model"])
    generator, discriminator = Generator(cfg, shape), Discriminator(cfg, shape)
    generator.load_state_dict(ckpt.load_tensors(directory, "ema"))
    discriminator.load_state_dict(ckpt.load_tensors(directory, "discriminator"))
    # channels-last weights make the convolutions pick channels-last kernels: 1.1-1.75x faster
    # inference on CPU (measured in benchmarks/); training measured no gain, so it stays contiguous.
    layout = {"device": device, "memory_format": torch.channels_last}
    return TrainedModel(generator.to(**layout).eval(), discriminator.to(**layout).eval(), shape, meta)


def latents_for_seeds(seeds: np.ndarray, latent_dim: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """z, label and rejection coin of each sample from its seed alone, so any sample regenerates by itself."""
    z = torch.empty(len(seeds), latent_dim)
    coins = torch.empty(len(seeds))
    rng = torch.Generator()
    for row, seed in enumerate(seeds.tolist()):
        rng.manual_seed(seed)
        torch.randn(latent_dim, generator=rng, out=z[row])
        torch.rand(1, generator=rng, out=coins[row:row + 1])
    labels = torch.as_tensor(seeds % num_classes if num_classes else np.full(len(seeds), -1), dtype=torch.long)
    return z, labels, coins.numpy()


@dataclass
class SampleBatch:
    seeds: np.ndarray
    images: torch.Tensor
    labels: np.ndarray
    logits: np.ndarray
    coins: np.ndarray  # uniform(0, 1) per seed, for the rejection decision

    def select(self, keep: np.ndarray) -> "SampleBatch":
        return SampleBatch(self.seeds[keep], self.images[torch.as_tensor(keep)], self.labels[keep],
                           self.logits[keep], self.coins[keep])

    @staticmethod
    def concat(batches: list["SampleBatch"]) -> "SampleBatch":
        return SampleBatch(np.concatenate([b.seeds for b in batches]), torch.cat([b.images for b in batches]),
                           np.concatenate([b.labels for b in batches]), np.concatenate([b.logits for b in batches]),
                           np.concatenate([b.coins for b in batches]))


def as_published(images: torch.Tensor) -> torch.Tensor:
    """Float images as their 8-bit PNGs decode, in [-1, 1]: what the discriminator's score and every
    evaluator see, so metrics describe the published images and not the generator's raw floats."""
    return to_unit_range(quantise(images))


@torch.inference_mode()
def generate_and_score(model: TrainedModel, seeds: np.ndarray, truncation: float = 1.0) -> "SampleBatch":
    """Images as published (8-bit, mapped back to [-1, 1], on the CPU), labels, the discriminator's logit
    of "real" for those images and each seed's coin.

    truncation: psi of the truncation trick, w = w_avg + psi * (w - w_avg) with w_avg of the sample's class; 1: off.
    """
    z, labels, coins = latents_for_seeds(seeds, model.generator.latent_dim, model.shape.num_classes)
    z, device_labels = z.to(model.device), labels.to(model.device)
    cond = device_labels if model.shape.num_classes else None
    w = model.generator.mapping(z, cond)
    if truncation != 1.0:  # skipped, not multiplied by 1, so that "off" is bit for bit the plain generator
        w = torch.lerp(model.w_avg[device_labels if cond is not None else 0], w, truncation)
    images = as_published(model.generator.synthesize(w))
    logits = model.discriminator(images, cond)
    return SampleBatch(seeds, images.float().cpu(), labels.numpy(), logits.float().cpu().numpy(), coins)


def sample_shard(model: TrainedModel, shard: int, quota: Quota, base_seed: int, batch_size: int,
                 rule: "RejectionRule | None" = None, truncation: float = 1.0) -> Iterator[tuple[SampleBatch, int]]:
    """Shard `shard`'s accepted samples batch by batch, each with the candidates it took.

    Each class of the quota draws from its own seed stream until it has its rows: exact counts,
    with rejection sampling too.
    """
    for label, rows in quota:
        kept = drawn = 0
        while kept < rows:
            # Ask for what is missing; with rejection, a whole batch (bounded either way to one batch).
            want = min(rows - kept if rule is None else batch_size, batch_size)
            seeds = class_seeds(base_seed, shard, label, model.shape.num_classes, drawn, want)
            batch = accept(generate_and_score(model, seeds, truncation), rule)
            batch = batch.select(np.arange(min(len(batch.seeds), rows - kept)))
            drawn, kept = drawn + len(seeds), kept + len(batch.seeds)
            # Once the quota fills, the candidates after the last one kept were never examined.
            examined = int(np.flatnonzero(seeds == batch.seeds[-1])[0]) + 1 if kept == rows else len(seeds)
            yield batch, examined


def class_indices(model: TrainedModel, class_counts: dict[int | str, int],
                  key: str = "generate.class_counts") -> dict[int, int]:
    """{class index or name: count} -> {class index: count} for this model, in class order."""
    names = [str(name) for name in model.meta.get("class_names") or []]
    if not model.shape.num_classes:
        raise ConfigError(f"{key}: the model is unconditional (no classes to ask for); leave {key} out")
    named = names and names != [str(i) for i in range(len(names))]  # "0".."K-1" are indices already
    valid = ", ".join(f"{i} ({n!r})" for i, n in enumerate(names)) if named else f"0-{model.shape.num_classes - 1}"
    counts: dict[int, int] = {}
    for cls, count in class_counts.items():
        index = names.index(cls) if cls in names else class_key(cls)  # a name, else an index (3 or "3")
        if not isinstance(index, int) or not 0 <= index < model.shape.num_classes or index in counts:
            problem = "given twice" if index in counts else "unknown class"
            raise ConfigError(f"{key}: {problem} {cls!r}; the model's classes are {valid}")
        counts[index] = count
    return dict(sorted(counts.items()))


@dataclass
class Samples:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 class index; -1 for an unconditional model
    d_scores: np.ndarray  # the discriminator's probability of "real"
    seeds: np.ndarray  # generate_and_score(model, seeds[i:i+1], truncation) regenerates sample i


def sample_images(model: TrainedModel | Path | str, num_samples: int | None = None,
                  class_counts: dict[int | str, int] | None = None, truncation: float = 1.0, seed: int = 0,
                  batch_size: int = 500) -> Samples:
    """num_samples images over all classes in turn, or class_counts ({class index or name: count}).

    The rows of a one-shard dataset generated with the same settings (without rejection sampling).
    """
    model = model if isinstance(model, TrainedModel) else load_model(Path(model))
    if not 0.0 <= truncation <= 1.0:
        raise ValueError(f"truncation: expected 0 <= psi <= 1 (1: off), got {truncation}")
    counts = None if class_counts is None else class_indices(model, class_counts, "class_counts")
    if counts is not None and num_samples not in (None, sum(counts.values())):
        raise ValueError(f"num_samples is {num_samples} but class_counts add up to {sum(counts.values())}")
    if counts is None and not (num_samples and num_samples > 0):
        raise ValueError(f"give num_samples (a positive count) or class_counts (got num_samples={num_samples})")
    quota = [(None, num_samples)] if counts is None else list(counts.items())
    batch = SampleBatch.concat([b for b, _ in sample_shard(model, 0, quota, seed, batch_size, None, truncation)])
    return Samples(quantise(batch.images).numpy(), batch.labels.astype(np.int64), logit_to_score(batch.logits),
                   batch.seeds)


# --- discriminator rejection sampling (Azadi et al., ICLR 2019) ---------------------------------


def accept(batch: SampleBatch, rule: RejectionRule | None) -> SampleBatch:
    """The samples of `batch` that rejection sampling keeps: each seed's coin below its acceptance probability."""
    if rule is None:
        return batch
    return batch.select(np.flatnonzero(batch.coins < rule.accept_probability(batch.logits, batch.labels)))


def rejection_sample(model: TrainedModel, rule: RejectionRule | None, base_seed: int, count: int,
                     batch_size: int, drawn_before: SampleBatch | None = None) -> tuple[SampleBatch, int]:
    """The first `count` accepted samples of shard 0's seed stream, and how many candidates that took.

    Without a rule this is simply the first `count` seeds: both settings draw from one stream, so a
    comparison of the two differs only in what rejection removed. drawn_before: the stream's first
    candidates, already generated (evaluation's plain samples): judged again, not generated again.
    """
    kept: list[SampleBatch] = []
    drawn = 0
    if drawn_before is not None:
        if not np.array_equal(drawn_before.seeds, shard_seeds(base_seed, 0, 0, len(drawn_before.seeds))):
            raise ValueError("drawn_before: not the first candidates of this seed's stream")
        kept, drawn = [accept(drawn_before, rule)], len(drawn_before.seeds)
    while sum(len(b.seeds) for b in kept) < count:
        kept.append(accept(generate_and_score(model, shard_seeds(base_seed, 0, drawn, batch_size)), rule))
        drawn += batch_size
    batch = SampleBatch.concat(kept).select(np.arange(count))
    return batch, candidates_through(batch.seeds[-1])


def burn_in(model: TrainedModel, base_seed: int, count: int, batch_size: int,
            truncation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Discriminator logits and labels of `count` samples from a seed range reserved for burn-in."""
    reserved = 2**16 - 1  # the last shard index is never used for output
    batches = [generate_and_score(model, shard_seeds(base_seed, reserved, start, min(batch_size, count - start)),
                                  truncation) for start in range(0, count, batch_size)]
    return np.concatenate([b.logits for b in batches]), np.concatenate([b.labels for b in batches])


def fit_to_model(model: TrainedModel, cfg: RejectionConfig, base_seed: int, batch_size: int,
                 truncation: float = 1.0) -> RejectionRule:
    """The rejection rule for `model` at cfg.target_acceptance, from cfg.burn_in samples (truncated as the output)."""
    logits, labels = burn_in(model, base_seed, cfg.burn_in, batch_size, truncation)
    per_class = cfg.per_class and model.shape.num_classes > 0
    return fit_rejection_rule(logits, cfg.target_acceptance, labels if per_class else None)


