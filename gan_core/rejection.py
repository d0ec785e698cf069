"""Discriminator rejection sampling (Azadi et al., ICLR 2019): the rule both kinds use to keep what D accepts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RejectionRule:
    """Accept x with probability sigmoid(F(x)), F = d - M - log(1 - exp(d - M - eps)) - gamma.

    One (M, gamma) per class, indexed by label, or a single pair for every sample. Per class, a
    projection discriminator's class term cannot shift one class's share of what is kept.
    """

    max_logit: tuple[float, ...]
    gamma: tuple[float, ...]
    eps: float = 1e-6

    @staticmethod
    def _per_sample(values: tuple[float, ...], labels: np.ndarray | None, count: int) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return values[labels] if len(values) > 1 else np.full(count, values[0])

    def shifted(self, logits: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        # Logits above the burn-in maximum are clipped to it: M stays fixed after burn-in so that
        # every sample's decision depends on its seed only (the paper updates M as it goes).
        top = self._per_sample(self.max_logit, labels, len(logits))
        d = np.minimum(logits.astype(np.float64), top) - top
        # log(-expm1(.)), not log1p(-exp(.)): near d = 0, 1 - exp(d - eps) is ~eps and exp's rounding
        # alone cost 1e-12 of F's value there, where the rule keeps its best samples.
        return d - np.log(-np.expm1(d - self.eps)) - self._per_sample(self.gamma, labels, len(logits))

    def accept_probability(self, logits: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.shifted(logits, labels)))


def _fit_one(logits: np.ndarray, target_acceptance: float) -> tuple[float, float]:
    """M from the logits, and the gamma whose expected acceptance over them is the target."""
    top = float(np.max(logits))
    base = RejectionRule((top,), (0.0,)).shifted(logits)
    low, high = float(base.min()) - 50.0, float(base.max()) + 50.0
    for _ in range(100):  # bisection: acceptance falls as gamma grows
        gamma = (low + high) / 2
        rate = float(np.mean(1.0 / (1.0 + np.exp(-(base - gamma)))))
        low, high = (gamma, high) if rate > target_acceptance else (low, gamma)
    return top, (low + high) / 2


def fit_rejection_rule(burn_in_logits: np.ndarray, target_acceptance: float,
                       labels: np.ndarray | None = None) -> RejectionRule:
    """Estimate M from burn-in logits and choose gamma so the expected acceptance is the target.

    With `labels` (the burn-in samples' classes) M and gamma are fitted per class, so every class
    keeps the target share and the class mix of the output stays that of the generator's input.
    """
    if labels is None:
        groups = [burn_in_logits]
    else:
        groups = [burn_in_logits[labels == k] for k in range(int(labels.max()) + 1)]
        if any(len(group) == 0 for group in groups):
            raise ValueError("generate.rejection.burn_in: too few samples to see every class")
    fitted = [_fit_one(group, target_acceptance) for group in groups]
    return RejectionRule(tuple(top for top, _ in fitted), tuple(gamma for _, gamma in fitted))


def logit_to_score(logits) -> np.ndarray:
    """P(real) from D's logits (an array, or a tensor on the CPU)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
