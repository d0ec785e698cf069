"""How far would fd_ratio move if the test split held other real images of the same size?

Analysis behind the evaluate stage's fd_ratio_sd (the pooled estimate below), and its check. For the trained
model of params.yaml, with the generated samples and the evaluator of the evaluate stage, three estimates of
fd_ratio's standard deviation over test splits of its size:

- bootstrap: the test images redrawn with replacement;
- pooled: test-sized subsets, without replacement, of the validation and test images pooled, the spread scaled
  by the finite-population correction sqrt((N - 1) / (N - n)) (N pooled, n per subset). Validation chose the
  exported step, so its images may sit a little nearer the samples: a small inflation of this spread;
- on a Gaussian fitted to the pooled images, where fresh test splits can be drawn: the true spread of
  fd_ratio over them beside what the first two estimators say from a single draw;
- the pooled spread of the distance and of the floor apart: which of the two moves the ratio;
- with --models, the spread of the difference between two models scored on the same subsets: how large a gap
  between two settings must be before this test split can show it.

    python scripts/fd_ratio_noise.py [--params params.yaml] [--draws 300]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gan_core.config import load_params, override_params
from gan_core.images import metrics as m
from gan_core.images.data import load_prepared
from gan_core.images.evaluate import build_context, fake_chunks
from gan_core.images.pixels import to_unit_range
from gan_core.images.sampling import load_model
from gan_core.images.train import pick_device
from gan_core.layout import Layout

Ratio = Callable[[np.ndarray], float]
Distances = Callable[[np.ndarray], tuple[float, float]]  # fd and fd_floor (metrics.fd_and_floor_against)


def ratio_of(distances: Distances) -> Ratio:
    def ratio(held_out: np.ndarray) -> float:
        fd, floor = distances(held_out)
        return fd / floor
    return ratio


def bootstrap(ratio: Ratio, held_out: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    n = len(held_out)
    return np.array([ratio(held_out[rng.integers(0, n, n)]) for _ in range(draws)])


def pooled_sd(ratio: Ratio, pool: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> float:
    spread = pooled_ratios([ratio], pool, n, draws, rng).std()
    return float(spread * m.finite_population_correction(len(pool), n))


def gaussian_check(ratio: Ratio, pool: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> str:
    mean, cov = pool.mean(0), np.cov(pool, rowvar=False)
    def draw(rows: int) -> np.ndarray:
        return rng.multivariate_normal(mean, cov, rows)
    truth = np.std([ratio(draw(n)) for _ in range(draws)])
    estimates = [(bootstrap(ratio, draw(n), draws, rng).std(), pooled_sd(ratio, draw(len(pool)), n, draws, rng))
                 for _ in range(3)]
    return (f"Gaussian of the pooled images: sd over fresh test splits {truth:.3f}; from single draws, bootstrap "
            + " / ".join(f"{b:.3f}" for b, _ in estimates) + ", pooled " + " / ".join(f"{p:.3f}" for _, p in estimates))


def pooled_ratios(ratios: list[Ratio] | list[Distances], pool: np.ndarray, n: int, draws: int,
                  rng: np.random.Generator) -> np.ndarray:
    """fd_ratio of every model (or its fd and fd_floor) on the same test-sized subsets of the pool: draws x models."""
    subsets = (pool[rng.permutation(len(pool))[:n]] for _ in range(draws))
    return np.array([[ratio(subset) for ratio in ratios] for subset in subsets])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--models", nargs="*", type=Path, help="other model folders trained on the same prepared "
                        "data: the spread of their difference from params.yaml's model over the same subsets")
    args = parser.parse_args()
    params, layout = override_params(load_params(args.params), {"evaluate.split": "test"}), Layout()
    device, distances = pick_device(params.train.device), []
    for folder in [layout.model(params), *(args.models or [])]:
        ctx = build_context(load_model(folder, device), layout.prepared(params), params, layout.plots,
                            layout.feature_cache)
        distances.append(m.fd_and_floor_against(fake_chunks(ctx, ctx.fake_features[0]), ctx.train_features))
    ratios = [ratio_of(model_distances) for model_distances in distances]
    test, rng = ctx.held_out_features[0], np.random.default_rng(0)
    validation_images = load_prepared(layout.prepared(params)).splits()["validation"].images
    pool = np.r_[test, ctx.features.embed(to_unit_range(validation_images))[0]]
    print(f"fd_ratio on {len(test)} test images: " + " / ".join(f"{ratio(test):.3f}" for ratio in ratios)
          + ", on validation: " + " / ".join(f"{ratio(pool[len(test):]):.3f}" for ratio in ratios))
    resampled = bootstrap(ratios[0], test, args.draws, rng)
    print(f"sd over test splits of {len(test)}: bootstrap {resampled.std():.3f} (resampled ratios' mean "
          f"{resampled.mean():.3f}), pooled with validation ({len(pool)}) "
          f"{pooled_sd(ratios[0], pool, len(test), args.draws, rng):.3f}")
    print(gaussian_check(ratios[0], pool, len(test), args.draws, rng))
    parts = pooled_ratios([distances[0]], pool, len(test), args.draws, rng)[:, 0]  # draws x (fd, fd_floor)
    fpc = m.finite_population_correction(len(pool), len(test))
    print("pooled sd of the parts: " + ", ".join(f"{name} {sd:.3g} (mean {mean:.3g}, {sd / mean:.1%})"
                                                  for name, sd, mean in zip(("fd", "fd_floor"), parts.std(0) * fpc,
                                                                            parts.mean(0))))
    if len(ratios) > 1:
        values = pooled_ratios(ratios, pool, len(test), args.draws, rng)
        print("pooled sd of each model: " + " / ".join(f"{sd:.3f}" for sd in values.std(0) * fpc)
              + "; of its difference from the first: "
              + " / ".join(f"{(values[:, 0] - values[:, k]).std() * fpc:.3f}" for k in range(1, len(ratios))))


if __name__ == "__main__":
    main()
