"""Sample-quality metrics as pure functions of arrays: Frechet distance, PRDC, memorisation, utility."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from scipy.spatial.distance import cdist
from sklearn.metrics import pairwise_distances


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of feature vectors (rows).

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), with tr (S_a S_b)^1/2 taken from the
    eigenvalues of S_a^1/2 S_b S_a^1/2, which is symmetric: no complex parts to discard, unlike sqrtm.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances computed from each pair's difference, so one pair of points gets the same bits in
    every call. sklearn's |a|^2 + |b|^2 - 2ab rounds with the points' norms and differently for A @ A.T
    (syrk) and A @ B.T (gemm) on some CPUs: a tie between a ball's radius and a distance then broke
    either way, and identical sets scored a density of 1.00037 on another machine."""
    return cdist(a, b)


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    distances = _pair_distances(points, points)
    return np.partition(distances, k, axis=1)[:, k]  # column 0 is the point itself


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
    distances = _pair_distances(real, fake)  # (real, fake)
    in_real_ball = distances < real_radii[:, None]
    in_fake_ball = distances < fake_radii[None, :]
    return {"precision": float(in_real_ball.any(axis=0).mean()),
            "recall": float(in_fake_ball.any(axis=1).mean()),
            "density": float(in_real_ball.sum() / (k * len(fake))),
            "coverage": float((distances.min(axis=1) < real_radii).mean())}


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return pairwise_distances(np.asarray(queries, np.float64), np.asarray(reference, np.float64)).min(axis=1)


def memorisation(fake: np.ndarray, train: np.ndarray, holdout: np.ndarray, ratio: float) -> dict[str, float]:
    """The share of generated samples that sit much closer to a training image than unseen real images do.

    Let t be the median, over held-out real images h, of the distance from h to its nearest
    training image: how close a new, independent sample of the data typically comes to the
    training set. A generated sample x counts as memorised when its nearest training image is
    closer than `ratio * t`. Exact copies of training images count (distance 0); the same rule
    applied to the held-out images themselves gives the share expected by chance
    (`memorisation_real`), the reference for the generated share.
    """
    holdout_nn = nearest_distances(holdout, train)
    threshold = ratio * float(np.median(holdout_nn))
    return {"memorisation": float((nearest_distances(fake, train) < threshold).mean()),
            "memorisation_real": float((holdout_nn < threshold).mean()),
            "memorisation_threshold": threshold}


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


def utility(synthetic_x: np.ndarray, synthetic_y: np.ndarray, real_x: np.ndarray, real_y: np.ndarray,
            holdout_x: np.ndarray, holdout_y: np.ndarray) -> dict[str, float]:
    """Accuracy on held-out real data of a classifier trained on synthetic data only, relative to real-trained.

    Both classifiers train on as many rows with the same class mix (`size_matched`): with 5,000 synthetic
    against 1,258 real rows the ratio measured sample size as much as sample quality.
    """
    synthetic_rows, real_rows = size_matched(synthetic_y, real_y)
    synthetic = classifier_accuracy(synthetic_x[synthetic_rows], synthetic_y[synthetic_rows], holdout_x, holdout_y)
    real = classifier_accuracy(real_x[real_rows], real_y[real_rows], holdout_x, holdout_y)
    return {"utility": synthetic / real, "utility_acc_synthetic": synthetic, "utility_acc_real": real,
            "utility_train_rows": len(real_rows)}
