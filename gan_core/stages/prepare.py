"""Prepare stage: the configured source -> data/prepared/<dataset>.npz (three splits)."""

from __future__ import annotations

from pathlib import Path

from gan_core.config import Params
from gan_core.data import BUNDLED_DIGITS, DataError, prepare_dataset
from gan_core.layout import Layout


def run_prepare(params: Params, layout: Layout = Layout()) -> dict:
    cfg = params.prepare
    check_source_is_tracked(cfg.source, layout)
    return prepare_dataset(cfg.source, layout.prepared(params), cfg.validation_fraction, cfg.test_fraction,
                           cfg.seed, cfg.class_names)


def check_source_is_tracked(source: str, layout: Layout = Layout()) -> None:
    # dvc.yaml's prepare stage depends on data/raw: a source elsewhere would change unnoticed.
    if source != BUNDLED_DIGITS and not Path(source).resolve().is_relative_to(layout.raw.resolve()):
        raise DataError(f"prepare.source: {source} is outside {layout.raw}/, the folder dvc.yaml tracks: "
                        f"move it to {layout.raw}/NAME and `dvc add` it there")
