"""The quality verdict a person reads first: each `gate:` threshold for the kind that was made, met or missed.

The thresholds are params.yaml's `gate:` section (GateConfig), the same ones that decide `production`
(gan_core.registry.check_gate): a card, a log line and the gate cannot disagree about a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gan_core.config import GateConfig

# What each gated metric is, in words a reader of the card knows.
DESCRIPTIONS = {
    "fd_ratio": "Frechet distance over the real-real floor",
    "label_consistency": "share of samples the evaluator labels as their class",
    "memorisation": "share of samples nearer a training image than real ones are",
    "utility": "accuracy trained on synthetic over trained on real",
    "quality": "SDMetrics quality (column shapes and pair trends)",
    "dcr_ratio": "distance to the closest training row over the test rows'",
}
MET, MISSED, NOT_CHECKED = "met", "missed", "not checked"
SPREAD_NOTE = "± one standard deviation over other real test sets of the same size (the metric's _sd in eval.json)"


@dataclass(frozen=True)
class Check:
    """One gate threshold against the evaluation: `gate.<metric>_<bound>` = threshold."""

    metric: str
    bound: str  # "min" or "max"
    threshold: float | None  # None: not checked
    value: float | None  # None: the evaluation lacks it (or it is not a number)
    spread: float | None = None  # `<metric>_sd` where the evaluation has one: how far value moves by chance

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.bound}"

    @property
    def status(self) -> str:
        if self.threshold is None:
            return NOT_CHECKED
        if self.value is None:
            return MISSED
        return MISSED if (self.value > self.threshold if self.bound == "max" else self.value < self.threshold) else MET

    @property
    def goal(self) -> str:
        if self.threshold is None:
            return "not checked"
        return f"{'<=' if self.bound == 'max' else '>='} {self.threshold:g}"

    @property
    def shown_value(self) -> str:
        if self.value is None:
            return "missing"
        return f"{self.value:.4g}" + ("" if self.spread is None else f" ± {self.spread:.2g}")

    def line(self) -> str:
        """'fd_ratio 1.274 ± 0.14 (goal <= 2, gate.fd_ratio_max): met'"""
        return f"{self.metric} {self.shown_value} (goal {self.goal}, gate.{self.key}): {self.status}"


@dataclass(frozen=True)
class Verdict:
    kind: str  # "image" or "table"
    checks: tuple[Check, ...]
    evaluated: bool  # False: no metrics at all (a model published without an evaluation)

    @property
    def missed(self) -> list[Check]:
        return [check for check in self.checks if check.status == MISSED]

    @property
    def passed(self) -> bool:
        return self.evaluated and not self.missed

    @property
    def headline(self) -> str:
        if not self.evaluated:
            return "not evaluated: no metrics were recorded for this model, so the quality gate was not checked"
        checked = [check for check in self.checks if check.status != NOT_CHECKED]
        if self.passed:
            return f"passed the quality gate: {len(checked)} of {len(checked)} thresholds met"
        return (f"missed the quality gate: {len(self.missed)} of {len(checked)} thresholds missed "
                f"({', '.join(check.metric for check in self.missed)})")

    def lines(self) -> list[str]:
        """One line per threshold, then the verdict (the evaluate stage's log)."""
        return [f"gate: {check.line()}" for check in self.checks] + [f"verdict: {self.headline}"]


def number(value) -> float | None:
    """A metric's value as the gate reads it: a finite or infinite float, else None (missing, NaN, text, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def verdict(metrics: dict, gate: GateConfig, kind: str | None = None) -> Verdict:
    """Each threshold of `gate` that bears on `kind` (default: the evaluation's own `kind`, else images)."""
    kind = kind or metrics.get("kind") or "image"
    kind = "table" if kind == "table" else "image"
    checks = []
    for key, threshold in gate.applies_to(kind).items():
        metric, bound = key.rsplit("_", 1)
        value, spread = number(metrics.get(metric)), number(metrics.get(f"{metric}_sd"))
        checks.append(Check(metric, bound, threshold, value, spread))
    return Verdict(kind, tuple(checks), bool(metrics))
