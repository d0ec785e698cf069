"""Train stage: prepared data -> models/<dataset>/, its curves in plots/ (an image GAN or a row GAN by the data's kind)."""

from __future__ import annotations

import csv
from pathlib import Path

from gan_core.checkpoint import read_meta, write_json_atomic
from gan_core.config import Params
from gan_core.fingerprint import data_fingerprint, table_training_fingerprint
from gan_core.images.sampling import pick_device
from gan_core.images.train import set_threads, train
from gan_core.kinds import Kind, Trainer, kind_of
from gan_core.layout import Layout
from gan_core.tables.data import load_prepared_table
from gan_core.tables.synthesizer import TableSynthesizer


def run_train(params: Params, layout: Layout = Layout(), resume: bool = False, progress: bool = True) -> dict:
    return PLUGINS[kind_of(layout.prepared(params))].train(params, layout, resume, progress)


class ImageTrainer:
    """The image GAN (gan_core.images.train, which ImageSynthesizer.fit runs too), with resumable checkpoints."""

    def train(self, params: Params, layout: Layout, resume: bool, progress: bool) -> dict:
        return train(params, layout.prepared(params), layout.model(params), checkpoint_dir=layout.checkpoints(params),
                     loss_log=layout.plots / "losses.csv", selection_log=layout.plots / "selection.csv",
                     feature_cache=layout.feature_cache, resume=resume, progress=progress)


class TableTrainer:
    """TableSynthesizer.fit on the training split, selected on validation; models/<dataset>/ also says what it
    came from. The model folder holds what sampling needs; the resume state goes to checkpoints/<dataset>/table,
    where `--resume` goes on from (and refuses another run's state)."""

    def train(self, params: Params, layout: Layout, resume: bool, progress: bool) -> dict:
        set_threads(params.train.threads)  # as for images: 1 thread gives the same model on any machine of one kind
        prepared, out_dir = layout.prepared(params), layout.model(params)
        data = load_prepared_table(prepared)
        synthesizer = TableSynthesizer(params.table, seed=params.train.seed, threads=None, progress=progress,
                                       device=str(pick_device(params.train.device)))
        history = synthesizer.fit(data.train, validation=data.validation, schema=data.schema,
                                  class_names=data.class_names, model_dir=out_dir,
                                  checkpoint_dir=layout.checkpoints(params) / "table", resume=resume).history
        summary = {"steps": history["steps"], "total_steps": params.table.steps, "seconds": history["seconds"],
                   "selected_step": history["best_step"], "selected_score_validation": history.get("best_score"),
                   "rows": len(data.train)}
        lineage = table_training_fingerprint(params, data_fingerprint(prepared))
        write_json_atomic(out_dir / "meta.json", read_meta(out_dir) | {"lineage": lineage, "summary": summary})
        write_rows_csv(layout.plots / "losses.csv", history["losses"])
        write_rows_csv(layout.plots / "selection.csv", history["selection"])
        return summary


PLUGINS: dict[Kind, Trainer] = {"image": ImageTrainer(), "table": TableTrainer()}


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """One CSV row per dict, columns in order of first appearance (a DVC plot)."""
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["step"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
