"""How much could any rejection sampler improve the Frechet distance of the trained model?

Analysis, not part of the product: it ranks candidates by a density ratio that is *not* allowed in
generation, one fitted on the test images the Frechet distance is measured against, next to the
same estimator fitted on the training split (the only real images a discriminator may see) and to
the discriminator itself (generate.rejection). Each keeps about the same share of candidates.

    python scripts/drs_ceiling.py [--params params.yaml] [--acceptance 0.3]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gan_core.config import load_params
from gan_core.images.evaluate import BATCH_SIZE, build_context, chunked_fd, quality_with_rejection
from gan_core.images.sampling import load_model, rejection_sample
from gan_core.images.train import pick_device
from gan_core.layout import Layout


def keep_by_ratio(log_ratio: np.ndarray, coins: np.ndarray, acceptance: float) -> np.ndarray:
    """Accept with probability min(1, exp(log_ratio - M)), M chosen so that `acceptance` of them pass."""
    def kept_share(top: float) -> float:
        return float(np.minimum(1.0, np.exp(log_ratio - top)).mean()) - acceptance
    top = brentq(kept_share, log_ratio.min() - 50, log_ratio.max() + 50)
    return np.flatnonzero(coins < np.minimum(1.0, np.exp(log_ratio - top)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--acceptance", type=float, default=0.3)
    args = parser.parse_args()
    params, layout = load_params(args.params), Layout()
    model = load_model(layout.model(params), pick_device(params.train.device))
    ctx = build_context(model, layout.prepared(params), params, layout.plots, layout.feature_cache)
    needed = len(ctx.fake.seeds)
    # Candidates for the ratio-based rules; the estimators learn from a disjoint set of generated samples.
    pool, _ = rejection_sample(model, None, params.evaluate.seed + 1, int(needed / args.acceptance) + 1, BATCH_SIZE)
    reference, _ = rejection_sample(model, None, params.evaluate.seed + 2, needed, BATCH_SIZE)
    pool_features, reference_features = ctx.features.embed(pool.images)[0], ctx.features.embed(reference.images)[0]
    print(f"plain sampling: FD {chunked_fd(ctx, ctx.fake_features[0]):.3f} "
          f"(the ratio rules' candidates, all kept: {chunked_fd(ctx, pool_features):.3f})")
    drs = quality_with_rejection(ctx, args.acceptance)
    print(f"discriminator rejection (generate.rejection): acceptance {drs['acceptance']:.3f}, FD {drs['fd']:.3f}")
    for name, real in (("training split", ctx.train_features), ("test images (oracle)", ctx.held_out_features[0])):
        ratio = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
            np.r_[real, reference_features], np.r_[np.ones(len(real)), np.zeros(len(reference_features))])
        keep = keep_by_ratio(ratio.decision_function(pool_features), pool.coins, args.acceptance)
        print(f"feature-space density ratio fitted on the {name}: acceptance {len(keep) / len(pool.seeds):.3f}, "
              f"FD {chunked_fd(ctx, pool_features[keep]):.3f}")


if __name__ == "__main__":
    main()
