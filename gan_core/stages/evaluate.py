"""Evaluate stage: a model and the test split -> metrics/eval.json and plots/ (image or table evaluators by kind)."""

from __future__ import annotations

from pathlib import Path

from gan_core.checkpoint import write_json_atomic
from gan_core.config import Params
from gan_core.images.evaluate import build_context, evaluate, rejection_table
from gan_core.images.sampling import load_model, pick_device
from gan_core.kinds import Evaluator, Kind, kind_of
from gan_core.layout import Layout
from gan_core.registry import model_identity
from gan_core.tables.model_metrics import evaluate_table_model

# Plot folders dvc.yaml declares for both kinds (each kind fills both: git keeps no empty folder).
PLOT_FOLDERS = ("classes", "marginals")


def run_evaluate(params: Params, layout: Layout = Layout(), model_dir: Path | None = None,
                 out_dir: Path | None = None) -> dict:
    """Metrics of the local model into metrics/ and plots/; of another model (model_dir) into out_dir only."""
    directory = model_dir or layout.model(params)
    metrics_path, plots = (out_dir / "eval.json", out_dir / "plots") if out_dir else (layout.metrics, layout.plots)
    for folder in PLOT_FOLDERS:
        (plots / folder).mkdir(parents=True, exist_ok=True)
    metrics = PLUGINS[kind_of(directory)].evaluate(params, layout, directory, metrics_path, plots)
    # Bound to the model measured (its generator's sha256, its step): the gate refuses another model's metrics.
    metrics = {**metrics, **model_identity(directory)}
    write_json_atomic(metrics_path, metrics)
    return metrics


class ImageEvaluator:
    """The image evaluators (gan_core.images.evaluate): Frechet distance, KID, PRDC, utility, ..."""

    def evaluate(self, params: Params, layout: Layout, model_dir: Path, metrics_path: Path, plots: Path) -> dict:
        model = load_model(model_dir, pick_device(params.train.device))
        return evaluate(model, layout.prepared(params), params, metrics_path, plots, layout.feature_cache,
                        layout.baseline_cache)


class TableEvaluator:
    """The row GAN's discriminator scores and the table evaluators (gan_core.tables.evaluate)."""

    def evaluate(self, params: Params, layout: Layout, model_dir: Path, metrics_path: Path, plots: Path) -> dict:
        return evaluate_table_model(model_dir, layout.prepared(params), params, metrics_path, plots)


def run_rejection_table(params: Params, targets: list[float], layout: Layout = Layout()) -> list[dict]:
    """Plain sampling against rejection sampling at each target acceptance, on the trained model."""
    model = load_model(layout.model(params), pick_device(params.train.device))
    ctx = build_context(model, layout.prepared(params), params, layout.plots, layout.feature_cache,
                        layout.baseline_cache)
    return rejection_table(ctx, targets)


PLUGINS: dict[Kind, Evaluator] = {"image": ImageEvaluator(), "table": TableEvaluator()}
