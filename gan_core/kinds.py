"""The two kinds of data, images and tables: which one a run is (decided once, by kind_of) and what a kind's
plug-in does at each stage.

A stage asks `kind_of(...)` once and calls that kind's plug-in for the stage through the small interfaces
below; nothing after that point branches on the kind. The interface is cut by stage, not one class per
kind, so that each stage imports only its own part of each kind: dvc.yaml's code dependencies are each
stage's import closure, and generation code must not retrain a model (tests/test_stage_deps.py).
The plug-ins themselves: gan_core.stages.{prepare,train,evaluate,generate}.PLUGINS, built on
gan_core.images.* and gan_core.tables.* (the library API: gan_core.{images,tables}.synthesizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from gan_core.config import GenerateConfig, Params
from gan_core.layout import Layout
from gan_core.tables.data import is_table_source, prepared_kind

if TYPE_CHECKING:  # for the interfaces' signatures only: the prepare stage needs neither
    from gan_core.rejection import RejectionRule
    from gan_core.shards import Quota, ShardResult

META_FILE = "meta.json"  # a model folder's (gan_core.checkpoint.META_FILE; read here without torch)

Kind = Literal["image", "table"]
KINDS: tuple[Kind, ...] = ("image", "table")

# What a kind's model is, as data: the file generation samples from (its sha256 names the model), the
# params sections that shape the model, and those that decide its weights (a publication's inputs).
GENERATOR_FILE: dict[Kind, str] = {"image": "ema.safetensors", "table": "generator.safetensors"}
MODEL_SECTIONS: dict[Kind, tuple[str, ...]] = {"image": ("model",), "table": ("table",)}
TRAINING_SECTIONS: dict[Kind, tuple[str, ...]] = {"image": ("prepare", "model", "train", "features"),
                                                  "table": ("prepare", "table", "train")}


def kind_of(thing: Params | Path | str) -> Kind:
    """The kind of params (by prepare.source), of a model folder (its meta.json), of a prepared .npz (an
    error when missing: prepare first), or of a source path (.csv, .parquet, a folder of .parquet files: a
    table; anything else: images)."""
    if isinstance(thing, Params):
        return "table" if is_table_source(thing.prepare.source) else "image"
    path = Path(thing)
    if (path / META_FILE).is_file():
        return model_kind(path)
    if path.suffix == ".npz":
        return prepared_kind(path)  # an image .npz source reads as a prepared image one: the same kind
    return "table" if is_table_source(str(thing)) else "image"


def model_kind(model_dir: Path) -> Kind:
    """As the model's meta.json says (models exported before tables are images)."""
    path = Path(model_dir) / META_FILE
    meta = json.loads(path.read_text()) if path.is_file() else {}
    table = meta.get("kind") == "table" or str(meta.get("format", "")).startswith("ganforge-table")
    return "table" if table else "image"


# --- what a kind's plug-in does, stage by stage --------------------------------------------------

class Preparer(Protocol):
    def prepare(self, params: Params, out_path: Path) -> dict:
        """params.prepare's source -> the prepared .npz (three splits); returns counts for the log."""


class Trainer(Protocol):
    def train(self, params: Params, layout: Layout, resume: bool, progress: bool) -> dict:
        """The prepared data -> layout.model(params) and its training curves in layout.plots; a summary."""


class Evaluator(Protocol):
    def evaluate(self, params: Params, layout: Layout, model_dir: Path, metrics_path: Path, plots: Path) -> dict:
        """The model against the prepared test split -> metrics_path (flat JSON) and plots; the metrics."""


class ShardWriter(Protocol):
    """Generation: a model -> Parquet shards planned, written (any order, any host) and summarised."""

    def load(self, model_dir: Path, params: Params) -> object: ...

    def rule(self, model: object, cfg: GenerateConfig) -> RejectionRule | None: ...

    def plan(self, model: object, cfg: GenerateConfig) -> list[Quota]: ...

    def shard(self, model: object, index: int, quota: Quota, cfg: GenerateConfig, rule: RejectionRule | None,
              out_dir: Path) -> ShardResult: ...

    def summarize(self, shards: list[ShardResult], rule: RejectionRule | None, cfg: GenerateConfig,
                  model: object) -> dict: ...

    def card(self, folder: Path, sources) -> list[Path]:
        """The dataset card (README.md, report.html, ...) into folder, from gan_core.card.CardSources."""
