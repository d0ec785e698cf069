"""Prepare stage: the configured source -> data/prepared/<dataset>.npz (three splits of images or of table rows)."""

from __future__ import annotations

from pathlib import Path

from gan_core.config import Params
from gan_core.errors import DataError
from gan_core.images.data import BUNDLED_DIGITS, prepare_dataset
from gan_core.kinds import Kind, Preparer, kind_of
from gan_core.layout import Layout
from gan_core.tables.data import prepare_table


def run_prepare(params: Params, layout: Layout = Layout()) -> dict:
    for key, source in (("prepare.source", params.prepare.source), ("prepare.test_source", params.prepare.test_source)):
        if source is not None:
            check_source_is_tracked(source, layout, key)
    return PLUGINS[kind_of(params)].prepare(params, layout.prepared(params))


class ImagePreparer:
    def prepare(self, params: Params, out_path: Path) -> dict:
        cfg = params.prepare
        table_keys = [key for key in ("columns", "target", "condition") if getattr(cfg, key)]
        if table_keys:
            key = table_keys[0]
            raise DataError(f"prepare.{key} is for a table source (.csv, .parquet); prepare.source {cfg.source} "
                            f"holds images: set prepare.{key}: {'{}' if key == 'columns' else 'null'}")
        return prepare_dataset(cfg.source, out_path, cfg.validation_fraction, cfg.test_fraction, cfg.seed,
                               resolution=cfg.resolution, transform=cfg.transform, test_source=cfg.test_source,
                               class_names=cfg.class_names)


class TablePreparer:
    def prepare(self, params: Params, out_path: Path) -> dict:
        cfg = params.prepare
        return prepare_table(cfg.source, out_path, cfg.validation_fraction, cfg.test_fraction, cfg.seed,
                             columns=cfg.columns, target=cfg.target, condition=cfg.condition,
                             test_source=cfg.test_source)


PLUGINS: dict[Kind, Preparer] = {"image": ImagePreparer(), "table": TablePreparer()}


def check_source_is_tracked(source: str, layout: Layout = Layout(), key: str = "prepare.source") -> None:
    # dvc.yaml's prepare stage depends on data/raw: a source elsewhere would change unnoticed.
    if source != BUNDLED_DIGITS and not Path(source).resolve().is_relative_to(layout.raw.resolve()):
        raise DataError(f"{key}: {source} is outside {layout.raw}/, the folder dvc.yaml tracks: "
                        f"move it to {layout.raw}/NAME and `dvc add` it there")
