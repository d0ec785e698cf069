"""Evaluate stage: a model and the test split -> metrics/eval.json and plots/."""

from __future__ import annotations

from pathlib import Path

from gan_core.config import Params
from gan_core.evaluate import build_context, evaluate, rejection_table
from gan_core.layout import Layout
from gan_core.sampling import load_model, pick_device


def run_evaluate(params: Params, layout: Layout = Layout(), model_dir: Path | None = None,
                 out_dir: Path | None = None) -> dict:
    """Metrics of the local model into metrics/ and plots/; of another model (model_dir) into out_dir only."""
    model = load_model(model_dir or layout.model(params), pick_device(params.train.device))
    metrics_path, plots = (out_dir / "eval.json", out_dir / "plots") if out_dir else (layout.metrics, layout.plots)
    return evaluate(model, layout.prepared(params), params, metrics_path, plots, layout.feature_cache)


def run_rejection_table(params: Params, targets: list[float], layout: Layout = Layout()) -> list[dict]:
    """Plain sampling against rejection sampling at each target acceptance, on the trained model."""
    model = load_model(layout.model(params), pick_device(params.train.device))
    ctx = build_context(model, layout.prepared(params), params, layout.plots, layout.feature_cache)
    return rejection_table(ctx, targets)
