"""Where a quality benchmark's distance comes from, for the samples `python -m benchmarks.quality --keep DIR` kept.

    python scripts/bench_breakdown.py DIR BUDGET-SEED [--prepared PREPARED.npz]

For each contender (DIR/CONTENDER-BUDGET-SEED.npz) and for as many real training images, against the test split
with the benchmark's evaluator: the Frechet distance split into its mean term and its covariance term, the
distance within each class, label consistency (the evaluator's class agrees with the requested one) per class,
and the share of samples that ink where real training images almost never do (`metrics.stray_ink`: the padding
around Fashion-MNIST's 28x28 garments), a defect a person sees on the grids' edges that the distance hardly weighs;
and memorisation by the evaluate stage's rule (`metrics.memorisation`, the test split as the held-out images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import CONTENDERS, EXAMPLE_PARAMS, Reference, prepare, reference  # noqa: E402
from gan_core.config import load_params  # noqa: E402
from gan_core.images import metrics as m  # noqa: E402
from gan_core.images.data import PreparedData, load_prepared  # noqa: E402
from gan_core.images.pixels import to_unit_range  # noqa: E402


def rows(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images as the evaluate stage's memorisation compares them: float rows in [0, 1]."""
    return rows(images).astype(np.float32) / 255.0


def breakdown(images: np.ndarray, labels: np.ndarray, ref: Reference, data: PreparedData, blank: np.ndarray) -> dict:
    """The figures of one set of uint8 samples (N x C x H x W) against the test split, as the benchmark scores;
    `blank`: the pixels real training images almost never ink (metrics.blank_pixels)."""
    features, predicted = ref.net.embed(to_unit_range(images))
    distance = m.frechet_distance(features, ref.test)
    mean_term = float(((features.mean(0) - ref.test.mean(0)) ** 2).sum())
    test_labels = data.test.labels
    classes = range(int(test_labels.max()) + 1)
    return {"fd": distance, "mean_term": mean_term, "covariance_term": distance - mean_term,
            "consistency": float((predicted == labels).mean()),
            "stray": m.inked_share(rows(images), blank),
            "class_fd": [m.frechet_distance(features[labels == c], ref.test[test_labels == c]) for c in classes],
            "class_consistency": [float((predicted[labels == c] == c).mean()) for c in classes]}


def describe(name: str, b: dict) -> str:
    return (f"{name:10s} FD {b['fd']:6.3f} = mean {b['mean_term']:.3f} + covariance {b['covariance_term']:.3f}; "
            f"label consistency {b['consistency']:.3f}; ink outside the real images' area {b['stray']:.1%} of "
            f"samples\n{'':10s} per class FD  " + " ".join(f"{v:6.2f}" for v in b["class_fd"])
            + f"\n{'':10s} per class LC  " + " ".join(f"{v:6.3f}" for v in b["class_consistency"]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keep", type=Path, help="the folder given to benchmarks.quality --keep")
    parser.add_argument("tag", help="BUDGET-SEED of the round, as in the file names (6000-0)")
    parser.add_argument("--prepared", type=Path, help="the prepared Fashion-MNIST .npz (default: prepare it)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        data = load_prepared(args.prepared or prepare(Path(folder), quick=False))
    ref = reference(data, len(data.test.labels), quick=False)
    real = data.train.images[:len(data.test.labels)], data.train.labels[:len(data.test.labels)]
    blank = m.blank_pixels(rows(data.train.images))
    own = breakdown(*real, ref, data, blank)
    train = pixels(data.train.images)
    ratio = load_params(EXAMPLE_PARAMS).evaluate.memorisation_ratio
    memo = m.memorisation_reference(train, pixels(data.test.images), ratio)
    print(f"floor {ref.fd_floor:.3f}; {blank.mean():.1%} of the pixels are inked by under 0.1 % of the real "
          f"training images; memorisation of the real test images {memo['memorisation_real']:.2%}\n"
          f"classes: {', '.join(data.class_names)}\n{describe('real train', own)}")
    for name in CONTENDERS:
        with np.load(args.keep / f"{name}-{args.tag}.npz") as saved:
            print(describe(name, breakdown(saved["images"], saved["labels"], ref, data, blank)))
            memorised = m.memorised_share(pixels(saved["images"]), train, memo["memorisation_threshold"])
            print(f"{'':10s} memorisation {memorised:.2%}")


if __name__ == "__main__":
    main(sys.argv[1:])
