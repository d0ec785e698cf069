"""Sample-quality metrics as pure functions of arrays: Frechet distance, KID, PRDC, memorisation, near-twins,
utility and CAS. Nearest neighbours are found in row blocks: never an N x M distance matrix at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import beta
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

CHUNK_BYTES = 64 * 2**20  # one block of distances at most: 64 MiB of float64 (1,000 rows against 8,388 ones)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of feature vectors (rows).

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), with tr (S_a S_b)^1/2 taken from the
    eigenvalues of S_a^1/2 S_b S_a^1/2, which is symmetric: no complex parts to discard, unlike sqrtm.
    """
    return Gaussian.fit(a).distance(*_moments(b))


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, np.float64)
    return rows.mean(0), np.cov(rows, rowvar=False)


@dataclass(frozen=True)
class Gaussian:
    """A Gaussian fitted to feature rows, with its covariance's square root: fitted once, compared many times."""

    mean: np.ndarray
    cov: np.ndarray
    root: np.ndarray  # cov^1/2

    @classmethod
    def fit(cls, rows: np.ndarray) -> Gaussian:
        mean, cov = _moments(rows)
        return cls(mean, cov, _psd_sqrt(cov))

    def distance(self, mean: np.ndarray, cov: np.ndarray) -> float:
        """Frechet distance to the Gaussian of `mean` and `cov`."""
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(self.root @ cov @ self.root), 0, None)).sum()
        return float(max(((self.mean - mean) ** 2).sum() + np.trace(self.cov) + np.trace(cov) - 2 * cross, 0.0))


def fd_and_floor_against(fake_chunks: list[np.ndarray],
                         train: np.ndarray) -> Callable[[np.ndarray], tuple[float, float]]:
    """fd (mean FD of the chunks) and its floor (FD of train) to any held-out rows, the chunks' and train's
    Gaussians fitted once: each call costs one covariance of the held-out rows, not a refit of 51,000 rows."""
    fakes, floor = [Gaussian.fit(chunk) for chunk in fake_chunks], Gaussian.fit(train)
    def distances(held_out: np.ndarray) -> tuple[float, float]:
        mean, cov = _moments(held_out)
        return float(np.mean([fake.distance(mean, cov) for fake in fakes])), floor.distance(mean, cov)
    return distances


def finite_population_correction(total: int, drawn: int) -> float:
    """What the spread of subsets of `drawn` rows out of `total`, without replacement, is multiplied by to be
    the spread over independent sets of that size."""
    return float(np.sqrt((total - 1) / (total - drawn)))


def fd_ratio_sd(fake_chunks: list[np.ndarray], train: np.ndarray, held_out: np.ndarray, other_real: np.ndarray,
                draws: int = 200, seed: int = 0) -> float | None:
    """How far fd_ratio (mean FD of the chunks to held_out, over the floor: FD of train to held_out) moves over
    other held-out sets of held_out's size: its standard deviation over subsets of that size drawn without
    replacement from held_out and other_real pooled, times the finite-population correction sqrt((N-1)/(N-n)).

    Not a bootstrap of held_out: resampling with replacement repeats rows, which pulls the ratio towards 1 and
    understated this spread by half on the digits (docs/experiments.md). None without other real rows."""
    pool = np.r_[np.asarray(held_out, np.float64), np.asarray(other_real, np.float64)]
    n, total = len(held_out), len(pool)
    if total <= n or n < 2:
        return None
    distances, rng = fd_and_floor_against(fake_chunks, train), np.random.default_rng(seed)
    ratios = [fd / floor for fd, floor in (distances(pool[rng.permutation(total)[:n]]) for _ in range(draws))]
    return float(np.std(ratios) * finite_population_correction(total, n))


class TooFewRows(ValueError):
    """Too few samples for a metric to mean anything (tiny test splits)."""


def polynomial_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3 (the KID of Binkowski et al. 2018):
    the kernel means within each set leave out the diagonal (a point with itself)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dim, m, n = a.shape[1], len(a), len(b)
    k_aa, k_bb, k_ab = ((x @ y.T / dim + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0,
        resamples: int = 2000) -> dict[str, float]:
    """Kernel Inception Distance: the mean of `polynomial_mmd2` over `subsets` disjoint random subsets of each
    set, up to subset_size rows of each (bounded cost, as Binkowski et al.), with a 95 % percentile bootstrap
    interval of that mean. Disjoint, so the subsets' values are independent (the B-test of Zaremba et al.
    2013) and their spread is the estimate's own: overlapping subsets gave intervals that missed 0 for
    two samples of one distribution. Unbiased: about 0, possibly below, for one distribution."""
    rng = np.random.default_rng(seed)
    subsets = min(subsets, len(a) // 2, len(b) // 2)  # fewer, on tiny sets: a subset needs two rows
    if subsets < 2:
        raise TooFewRows(f"kid needs at least 4 rows on each side (got {len(a)} and {len(b)})")
    # each side as large as it allows: 26 test images a subset for the digits need not cap the generated ones
    size_a, size_b = min(subset_size, len(a) // subsets), min(subset_size, len(b) // subsets)
    blocks_a = np.split(rng.permutation(len(a))[:subsets * size_a], subsets)
    blocks_b = np.split(rng.permutation(len(b))[:subsets * size_b], subsets)
    values = np.array([polynomial_mmd2(a[rows_a], b[rows_b]) for rows_a, rows_b in zip(blocks_a, blocks_b)])
    means = values[rng.integers(0, subsets, (resamples, subsets))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"kid": float(values.mean()), "kid_low": float(low), "kid_high": float(high)}


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances computed from each pair's difference, so one pair of points gets the same bits in
    every call. sklearn's |a|^2 + |b|^2 - 2ab rounds with the points' norms and differently for A @ A.T
    (syrk) and A @ B.T (gemm) on some CPUs: a tie between a ball's radius and a distance then broke
    either way, and identical sets scored a density of 1.00037 on another machine."""
    return cdist(a, b)


def _distance_blocks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, distances from a[rows] to every row of b), rows in blocks of about CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // (8 * max(1, len(b))))
    for start in range(0, len(a), step):
        rows = slice(start, start + step)
        yield rows, _pair_distances(a[rows], b)


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = np.empty(len(points))
    for rows, block in _distance_blocks(points, points):
        radii[rows] = np.partition(block, k, axis=1)[:, k]  # column 0 is the point itself
    return radii


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k-nearest-neighbour balls.

    precision: share of fake samples inside some real sample's k-NN ball (fidelity);
    recall: share of real samples inside some fake sample's k-NN ball (diversity);
    density: mean number of real balls holding each fake sample, divided by k (about 1 when
    the two sets match, above 1 when fakes crowd the dense regions of the real data);
    coverage: share of real samples whose ball holds at least one fake sample.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    fake_in_some_ball = np.zeros(len(fake), bool)
    real_recalled, real_covered = np.zeros(len(real), bool), np.zeros(len(real), bool)
    balls_held = 0
    for rows, distances in _distance_blocks(real, fake):  # (real rows, fake)
        in_real_ball = distances < real_radii[rows, None]
        fake_in_some_ball |= in_real_ball.any(axis=0)
        balls_held += int(in_real_ball.sum())
        real_recalled[rows] = (distances < fake_radii[None, :]).any(axis=1)
        real_covered[rows] = distances.min(axis=1) < real_radii[rows]
    return {"precision": float(fake_in_some_ball.mean()), "recall": float(real_recalled.mean()),
            "density": float(balls_held / (k * len(fake))), "coverage": float(real_covered.mean())}


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance from each query to its nearest reference row, as |q|^2 + min(|r|^2 - 2 q.r) in float32 blocks.

    One float32 matrix product (BLAS sgemm) per block: half float64's time in pixel space (60,000 x 51,000
    rows of 1,024 pixels), and its rounding (about 1e-4 on a squared distance of 1,024 pixels in [0, 1]) is
    far below the distances memorisation compares. sklearn upcasts float32 to float64, hence numpy here.
    """
    queries, reference = np.asarray(queries, np.float32), np.asarray(reference, np.float32)
    reference_sq = np.einsum("ij,ij->i", reference, reference)
    step = max(1, CHUNK_BYTES // (4 * max(1, len(reference))))
    nearest_sq = np.empty(len(queries), np.float64)
    for start in range(0, len(queries), step):
        block = queries[start:start + step]
        partial = block @ reference.T
        partial *= -2.0
        partial += reference_sq
        nearest_sq[start:start + step] = np.einsum("ij,ij->i", block, block) + partial.min(axis=1)
    return np.sqrt(np.clip(nearest_sq, 0.0, None))


def memorisation(fake: np.ndarray, train: np.ndarray, holdout: np.ndarray, ratio: float) -> dict[str, float]:
    """The share of generated samples that sit much closer to a training image than unseen real images do.

    Let t be the median, over held-out real images h, of the distance from h to its nearest
    training image: how close a new, independent sample of the data typically comes to the
    training set. A generated sample x counts as memorised when its nearest training image is
    closer than `ratio * t`. Exact copies of training images count (distance 0); the same rule
    applied to the held-out images themselves gives the share expected by chance
    (`memorisation_real`), the reference for the generated share.
    """
    reference = memorisation_reference(train, holdout, ratio)
    return {"memorisation": memorised_share(fake, train, reference["memorisation_threshold"])} | reference


def memorisation_reference(train: np.ndarray, holdout: np.ndarray, ratio: float) -> dict[str, float]:
    """What memorisation compares generated samples with, from the real images alone: the threshold
    (`ratio` times the held-out images' median distance to their nearest training image) and the held-out
    images' own share under it. Scoring many generators against one split computes it once."""
    holdout_nn = nearest_distances(holdout, train)
    threshold = ratio * float(np.median(holdout_nn))
    return {"memorisation_real": float((holdout_nn < threshold).mean()), "memorisation_threshold": threshold}


def memorised_share(fake: np.ndarray, train: np.ndarray, threshold: float) -> float:
    """The share of generated rows whose nearest training row is closer than `threshold`."""
    return float((nearest_distances(fake, train) < threshold).mean())


def blank_pixels(train: np.ndarray, level: int = 20, rare: float = 0.001) -> np.ndarray:
    """The pixels (uint8 rows' columns) that under `rare` of the real training images ink above `level` of 255."""
    return (train > level).mean(axis=0) < rare


def inked_share(images: np.ndarray, blank: np.ndarray, level: int = 20) -> float:
    """The share of uint8 rows that ink (above `level`) any of the `blank` pixels; 0 where none is blank."""
    return float((images[:, blank] > level).any(axis=1).mean()) if blank.any() else 0.0


def stray_ink(fake: np.ndarray, train: np.ndarray, held_out: np.ndarray, level: int = 20,
              rare: float = 0.001) -> dict[str, float]:
    """The share of generated images that ink (above `level` of 255) a pixel the real training images almost
    never ink (under `rare` of them): stray strokes outside where the data draws, such as the padding around
    Fashion-MNIST's centred garments, which a person sees on a grid and a feature-space distance hardly weighs.
    Images are uint8 rows; `stray_ink_real` is the held-out real images' own share, `stray_ink_area` the share of
    pixels (channels apart) that count. Where the training images ink every pixel, nothing counts."""
    blank = blank_pixels(train, level, rare)
    return {"stray_ink": inked_share(fake, blank, level), "stray_ink_real": inked_share(held_out, blank, level),
            "stray_ink_area": float(blank.mean())}


def classifier_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                        seed: int = 0) -> float:
    """Held-out accuracy of a multinomial logistic regression on flattened inputs (the utility probe)."""
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(train_x.reshape(len(train_x), -1), train_y)
    return float(model.score(test_x.reshape(len(test_x), -1), test_y))


def size_matched(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a and of b with the same count of each class: per class, as many as the smaller set has
    (the first ones, in order), so two sets made alike differ in what they hold, not in how much."""
    picked_a, picked_b = [], []
    for label in np.union1d(labels_a, labels_b):
        rows_a, rows_b = np.flatnonzero(labels_a == label), np.flatnonzero(labels_b == label)
        count = min(len(rows_a), len(rows_b))
        picked_a.append(rows_a[:count])
        picked_b.append(rows_b[:count])
    return np.sort(np.concatenate(picked_a)), np.sort(np.concatenate(picked_b))


Accuracy = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def utility(synthetic_x: np.ndarray, synthetic_y: np.ndarray, real_x: np.ndarray, real_y: np.ndarray,
            holdout_x: np.ndarray, holdout_y: np.ndarray, real_accuracy: Accuracy | None = None
            ) -> dict[str, float]:
    """Accuracy on held-out real data of a classifier trained on synthetic data only, relative to real-trained.

    Both classifiers train on as many rows with the same class mix (`size_matched`): with 5,000 synthetic
    against 1,258 real rows the ratio measured sample size as much as sample quality. `real_accuracy` fits the
    real-trained one (default classifier_accuracy; a cache of it: it is the same in every evaluation of a dataset).
    """
    synthetic_rows, real_rows = size_matched(synthetic_y, real_y)
    synthetic = classifier_accuracy(synthetic_x[synthetic_rows], synthetic_y[synthetic_rows], holdout_x, holdout_y)
    real = (real_accuracy or classifier_accuracy)(real_x[real_rows], real_y[real_rows], holdout_x, holdout_y)
    return {"utility": synthetic / real, "utility_acc_synthetic": synthetic, "utility_acc_real": real,
            "utility_train_rows": len(real_rows)}


def cas(synthetic_x: np.ndarray, synthetic_y: np.ndarray, real_x: np.ndarray, real_y: np.ndarray,
        test_x: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """Classification Accuracy Score (Ravuri & Vinyals 2019): test accuracy of a classifier trained on synthetic
    rows only, over that of one trained on the real rows; per class as many rows on each side (`size_matched`:
    the real training split's counts when there are enough synthetic rows).

    The classifier is a standardised logistic regression on the evaluator network's features, not the paper's
    ResNet trained from scratch: a CNN on 60,000 images per side takes tens of minutes on a 2-core CPU, this
    takes seconds, and unlike `utility` (pixels) it is strong on images (the features separate the classes).
    The features were learnt from the real training split: a linear-probe CAS, kinder to data that lands in
    the right class regions than a from-scratch classifier would be.
    """
    synthetic_rows, real_rows = size_matched(synthetic_y, real_y)
    accuracy = {}
    for name, x, y in (("synthetic", synthetic_x[synthetic_rows], synthetic_y[synthetic_rows]),
                       ("real", real_x[real_rows], real_y[real_rows])):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
        accuracy[name] = float(model.fit(x, y).score(test_x, test_y))
    return {"cas": accuracy["synthetic"] / accuracy["real"], "cas_acc_synthetic": accuracy["synthetic"],
            "cas_acc_real": accuracy["real"]}


def _twin_share(points: np.ndarray, threshold: float) -> float:
    """Share of rows whose nearest other row is nearer than threshold."""
    return float((_knn_radii(points, 1) < threshold).mean()) if len(points) > 1 else 0.0


def near_twins(fake: np.ndarray, fake_y: np.ndarray, real: np.ndarray, real_y: np.ndarray, ratio: float,
               draws: int = 5, seed: int = 0) -> dict:
    """Within each class, the share of samples with a near-twin among the other samples of their class,
    generated against real, on the same number of rows per class.

    The threshold of a class is `ratio` times the median distance from a real row to its nearest other
    real row of that class. Generated rows are drawn `draws` times, as many per class as real rows
    (a larger set has nearer neighbours by chance alone), and their shares averaged.
    """
    rng = np.random.default_rng(seed)
    fake_twins, real_twins, rows, by_class = 0.0, 0.0, 0, {}
    for label in np.unique(real_y):
        real_k, fake_k = real[real_y == label], fake[fake_y == label]
        size = min(len(real_k), len(fake_k))
        if size < 2:
            continue
        threshold = ratio * float(np.median(_knn_radii(real_k, 1)))
        real_share = float(np.mean([_twin_share(real_k[rng.choice(len(real_k), size, replace=False)], threshold)
                                    for _ in range(draws if size < len(real_k) else 1)]))
        fake_share = float(np.mean([_twin_share(fake_k[rng.choice(len(fake_k), size, replace=False)], threshold)
                                    for _ in range(draws)]))
        fake_twins, real_twins = fake_twins + fake_share * size, real_twins + real_share * size
        by_class[str(int(label))] = {"generated": fake_share, "real": real_share}
        rows += size
    if not rows:
        raise TooFewRows("near_twins needs a class with two or more real and generated rows")
    generated, real_rate = fake_twins / rows, real_twins / rows
    real_low, real_high = _binomial_interval(round(real_twins), rows)
    return {"near_twins": generated, "near_twins_real": real_rate,
            "near_twins_ratio": generated / real_rate if real_rate else None, "near_twins_by_class": by_class,
            # The real rate rests on few events on small test splits (6 of 269 digits): the ratio's range over
            # the real rate's 95 % interval says how far the point ratio can be trusted.
            "near_twins_real_low": real_low, "near_twins_real_high": real_high,
            "near_twins_ratio_low": generated / real_high,
            "near_twins_ratio_high": generated / real_low if real_low else None}


def _binomial_interval(events: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate seen as `events` of `trials`."""
    tail = (1 - level) / 2
    low = float(beta.ppf(tail, events, trials - events + 1)) if events else 0.0
    high = float(beta.ppf(1 - tail, events + 1, trials - events)) if events < trials else 1.0
    return low, high
