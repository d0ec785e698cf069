"""Evaluation: evaluators registered by name write metrics/eval.json and plots for DVC."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from gan_core.checkpoint import write_json_atomic
from gan_core.config import EvaluateConfig
from gan_core.data import ImageSet, load_prepared
from gan_core.sampling import SampleBatch, TrainedModel, generate_and_score, logit_to_score, shard_seeds
from gan_core.train import to_unit_range


@dataclass
class EvalContext:
    model: TrainedModel
    train: ImageSet
    holdout: ImageSet
    fake: SampleBatch  # images in [-1, 1], generated for `fake.labels`
    plots_dir: Path
    cfg: EvaluateConfig


Evaluator = Callable[[EvalContext], dict]
EVALUATORS: dict[str, Evaluator] = {}


def register(name: str) -> Callable[[Evaluator], Evaluator]:
    def add(fn: Evaluator) -> Evaluator:
        EVALUATORS[name] = fn
        return fn
    return add


def _summary(scores: np.ndarray) -> dict:
    q10, q50, q90 = np.quantile(scores, [0.1, 0.5, 0.9])
    return {"mean": float(scores.mean()), "p10": float(q10), "p50": float(q50), "p90": float(q90)}


@torch.inference_mode()
def discriminator_logits(model: TrainedModel, data: ImageSet, batch_size: int = 1000) -> np.ndarray:
    out = []
    for start in range(0, len(data.labels), batch_size):
        images = to_unit_range(data.images[start:start + batch_size]).to(model.device)
        labels = torch.as_tensor(data.labels[start:start + batch_size]).to(model.device)
        out.append(model.discriminator(images, labels if model.shape.num_classes else None).float().cpu())
    return torch.cat(out).numpy()


@register("discriminator")
def discriminator_scores(ctx: EvalContext) -> dict:
    """D's probability of "real" on held-out real and on generated images, and how well it separates them.

    An AUC near 0.5 means the discriminator cannot tell generated digits from unseen real ones.
    """
    real = logit_to_score(discriminator_logits(ctx.model, ctx.holdout))
    fake = logit_to_score(ctx.fake.logits)
    truth = np.r_[np.ones(len(real)), np.zeros(len(fake))]
    auc = roc_auc_score(truth, np.r_[real, fake])
    _write_score_histogram(ctx.plots_dir / "d_scores.csv", real, fake)
    return {"d_score_real": _summary(real), "d_score_fake": _summary(fake), "d_auc": float(auc)}


def _write_score_histogram(path: Path, real: np.ndarray, fake: np.ndarray, bins: int = 20) -> None:
    edges = np.linspace(0, 1, bins + 1)
    real_counts, _ = np.histogram(real, edges)
    fake_counts, _ = np.histogram(fake, edges)
    rows = ["score,real,generated"] + [f"{(a + b) / 2:.3f},{r / len(real):.5f},{f / len(fake):.5f}"
                                        for a, b, r, f in zip(edges, edges[1:], real_counts, fake_counts)]
    path.write_text("\n".join(rows) + "\n")


def sample_grid(model: TrainedModel, columns: int, seed: int) -> np.ndarray:
    """A grid image (H, W[, 3]) uint8: one row per class (or `columns` rows when unconditional)."""
    rows = model.shape.num_classes or columns
    seeds = shard_seeds(seed, 1, 0, rows * columns)
    # Seeds are assigned labels by seed % classes; sort so each row holds one class.
    batch = generate_and_score(model, seeds)
    order = np.argsort(batch.labels, kind="stable") if model.shape.num_classes else np.arange(len(seeds))
    pixels = ((batch.images[torch.as_tensor(order)].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    n, c, h, w = pixels.shape
    grid = pixels.reshape(rows, columns, c, h, w).transpose(0, 3, 1, 4, 2).reshape(rows * h, columns * w, c)
    return grid[..., 0] if c == 1 else grid


def write_sample_grid(model: TrainedModel, path: Path, columns: int, seed: int, scale: int = 4) -> None:
    grid = Image.fromarray(sample_grid(model, columns, seed))
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)


def evaluate(model: TrainedModel, prepared: Path, cfg: EvaluateConfig, metrics_path: Path,
             plots_dir: Path) -> dict:
    unknown = [name for name in cfg.evaluators if name not in EVALUATORS]
    if unknown:
        raise ValueError(f"evaluate.evaluators: unknown {unknown} (known: {sorted(EVALUATORS)})")
    train, holdout = load_prepared(prepared)
    plots_dir.mkdir(parents=True, exist_ok=True)
    fake = generate_and_score(model, shard_seeds(cfg.seed, 0, 0, cfg.num_samples))
    ctx = EvalContext(model, train, holdout, fake, plots_dir, cfg)
    metrics = {"parameters": model.meta["parameters"], "step": model.meta["step"]}
    for name in cfg.evaluators:
        metrics |= EVALUATORS[name](ctx)
    write_sample_grid(model, plots_dir / "samples.png", cfg.grid_rows, cfg.seed)
    write_json_atomic(Path(metrics_path), metrics)
    return metrics


def read_metrics(path: Path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
