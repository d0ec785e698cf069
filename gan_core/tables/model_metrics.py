"""A trained table model's metrics/eval.json and plots: its discriminator on the test rows, then the table evaluators."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from gan_core import fingerprint
from gan_core.checkpoint import write_json_atomic
from gan_core.config import Params
from gan_core.layout import grid_file_names
from gan_core.rejection import logit_to_score
from gan_core.scores import score_summary, write_score_histogram
from gan_core.shards import shard_seeds
from gan_core.tables.data import load_prepared_table
from gan_core.tables.plots import write_marginals_png


def write_class_marginals(data, synthetic, plots: Path) -> None:
    """plots/samples.png: every column, test rows vs generated; plots/classes/<value>.png: the same within each
    value of the condition column (the table's per-class grids), or all.png when unconditional."""
    kinds = {c.name: c.kind for c in data.schema.columns}
    write_marginals_png(data.test, synthetic, kinds, plots / "samples.png")
    folder = plots / "classes"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if not data.class_names:
        shutil.copyfile(plots / "samples.png", folder / "all.png")
        return
    column = data.schema.condition
    for name, file_name in zip(data.class_names, grid_file_names(data.class_names)):
        real, fake = (frame[frame[column].astype(str) == name] for frame in (data.test, synthetic))
        write_marginals_png(real, fake, kinds, folder / file_name)


def evaluate_table_model(model_dir: Path, prepared: Path, params: Params, metrics_path: Path, plots: Path) -> dict:
    """evaluate.num_samples generated rows against the real splits: the model's own discriminator on the test
    split (d_auc, plots/d_scores.csv), then the table evaluators (gan_core.tables.evaluate); one flat JSON."""
    from gan_core.tables.evaluate import evaluate_table
    from gan_core.tables.sampling import load_table_model, sample_rows, score_rows

    model, data = load_table_model(model_dir), load_prepared_table(prepared)
    fingerprint.check_model_data(f"the model (step {model.meta.get('step')})",
                                 {"fingerprint": model.meta.get("lineage")}, prepared,
                                 fingerprint.data_fingerprint(prepared))
    synthetic, fake_logits = sample_rows(model, shard_seeds(params.evaluate.seed, 0, 0, params.evaluate.num_samples))
    real = logit_to_score(score_rows(model.scorer, model.transformer.transform(data.test)))
    fake = logit_to_score(fake_logits)
    write_score_histogram(plots / "d_scores.csv", real, fake)
    write_class_marginals(data, synthetic, plots)
    metrics = {"kind": "table", "step": model.meta.get("step"), "d_score_real": score_summary(real),
               "d_score_fake": score_summary(fake),
               "d_auc": float(roc_auc_score(np.r_[np.ones(len(real)), np.zeros(len(fake))], np.r_[real, fake]))}
    metrics |= evaluate_table(data.train, data.test, synthetic, data.schema, plots_dir=plots,
                              seed=params.evaluate.seed)
    write_json_atomic(Path(metrics_path), metrics)
    return metrics
