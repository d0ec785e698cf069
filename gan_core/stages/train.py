"""Train stage: prepared data -> models/<dataset>/, its curves in plots/ (an image GAN or a row GAN by the data's kind)."""

from __future__ import annotations

import csv
from pathlib import Path

from gan_core.checkpoint import read_meta, write_json_atomic
from gan_core.config import Params
from gan_core.fingerprint import data_fingerprint, table_training_fingerprint
from gan_core.images.sampling import pick_device
from gan_core.images.train import set_threads, train
from gan_core.layout import Layout
from gan_core.tables.data import arrow_schema_text, load_prepared_table, prepared_kind


def run_train(params: Params, layout: Layout = Layout(), resume: bool = False, progress: bool = True) -> dict:
    if prepared_kind(layout.prepared(params)) == "table":
        return train_table(params, layout, resume=resume, progress=progress)
    return train(params, layout.prepared(params), layout.model(params), checkpoint_dir=layout.checkpoints(params),
                 loss_log=layout.plots / "losses.csv", selection_log=layout.plots / "selection.csv",
                 feature_cache=layout.feature_cache, resume=resume, progress=progress)


def train_table(params: Params, layout: Layout = Layout(), resume: bool = False, progress: bool = True) -> dict:
    """The row GAN on the training split, selected on validation; models/<dataset>/ also says what it came from.

    The model folder holds what sampling needs; the resume state goes to checkpoints/<dataset>/table, where
    `--resume` goes on from (and refuses another run's state).
    """
    from gan_core.tables.train import train_table_gan

    set_threads(params.train.threads)  # as for images: 1 thread gives the same model on any machine of one kind
    prepared, out_dir = layout.prepared(params), layout.model(params)
    data = load_prepared_table(prepared)
    fingerprint = table_training_fingerprint(params, data_fingerprint(prepared))
    history = train_table_gan(data.train, data.validation, data.schema, params.table, out_dir,
                              seed=params.train.seed, checkpoint_dir=layout.checkpoints(params) / "table",
                              resume=resume, progress=progress,
                              device=str(pick_device(params.train.device)))
    summary = {"steps": history["steps"], "total_steps": params.table.steps, "seconds": history["seconds"],
               "selected_step": history["best_step"], "selected_score_validation": history.get("best_score"),
               "rows": len(data.train)}
    meta = read_meta(out_dir)
    # Beside what training wrote: what the pipeline needs (kind, classes, the rows' dtypes, lineage).
    write_json_atomic(out_dir / "meta.json", meta | {
        "kind": "table", "class_names": data.class_names, "arrow_schema": arrow_schema_text(data.train, data.schema),
        "lineage": fingerprint, "summary": summary})
    write_rows_csv(layout.plots / "losses.csv", history["losses"])
    write_rows_csv(layout.plots / "selection.csv", history["selection"])
    return summary


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """One CSV row per dict, columns in order of first appearance (a DVC plot)."""
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["step"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
