"""TableSynthesizer: the row GAN as a library, `fit(df)` then `sample(n)`; the train stage calls it too.

No S3, DVC or Prefect: a DataFrame in, a DataFrame out. A fitted synthesizer is a model folder
(safetensors + meta.json, no pickle) in the format the pipeline's generate stage samples from, so
`save(path)` writes one and `load(path)` reads one, whichever of the two made it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gan_core.checkpoint import read_meta, write_json_atomic
from gan_core.config import TableConfig, parse_params
from gan_core.shards import class_seeds, shard_seeds
from gan_core.tables.data import arrow_schema_text, condition_names
from gan_core.tables.sampling import TableModel, load_table_model, sample_rows
from gan_core.tables.schema import TableError, TableSchema, infer_schema
from gan_core.tables.train import train_table_gan

# Without a config: fewer steps than the pipeline's 1,000, so that a small table fits in seconds on a CPU.
LIBRARY_STEPS = 300


class TableSynthesizer:
    """A conditional row GAN (CTGAN's ideas, gan_core.tables) for one DataFrame's columns and dtypes.

    config: the `table:` section of params.yaml (gan_core.config.TableConfig; default: its defaults with
    LIBRARY_STEPS steps); keyword overrides such as steps=1000 replace single fields of it. seed: weight
    initialisation and training draws. threads: torch CPU threads for fit (1: the same model on any machine,
    and far faster than threads contending for a busy CPU); None leaves torch's setting alone.
    """

    def __init__(self, config: TableConfig | None = None, *, seed: int = 0, device: str = "cpu",
                 threads: int | None = 1, progress: bool = True, **overrides):
        base = (config or TableConfig(steps=LIBRARY_STEPS)).model_dump(mode="json")
        # Validated as params.yaml's `table:` section: a typo is one line naming the key (table.step: did you mean ...)
        self.config = parse_params({"table": base | overrides}, source="TableSynthesizer").table
        self.seed, self.device, self.threads, self.progress = seed, device, threads, progress
        self.model: TableModel | None = None
        self.history: dict | None = None  # training's losses and selection scores, after fit
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._model_dir: Path | None = None

    def fit(self, data: pd.DataFrame, *, condition: str | None = None, target: str | None = None,
            columns: dict[str, str] | None = None, validation: pd.DataFrame | None = None,
            schema: TableSchema | None = None, class_names: list[str] | None = None,
            model_dir: Path | str | None = None, checkpoint_dir: Path | str | None = None,
            resume: bool = False) -> TableSynthesizer:
        """Train on the rows of `data`; returns self.

        condition: a categorical or boolean column to sample by (sample's class_counts); target: the column
        the utility metric predicts; columns: kind overrides {name: continuous|integer|categorical|boolean|
        datetime}. validation: rows the checkpoint is selected on (default: `data` itself). schema,
        class_names, model_dir, checkpoint_dir, resume: what the train stage passes (its prepared splits, models/ and
        checkpoints/ folders).
        """
        if not isinstance(data, pd.DataFrame):
            raise TableError(f"TableSynthesizer.fit: expected a pandas DataFrame, got {type(data).__name__}")
        schema = schema or infer_schema(data, overrides=columns, target=target, condition=condition)
        out_dir = Path(model_dir) if model_dir is not None else self._new_workdir()
        if self.threads:
            torch.set_num_threads(self.threads)
        self.history = train_table_gan(data, validation, schema, self.config, out_dir, seed=self.seed,
                                       checkpoint_dir=checkpoint_dir, resume=resume, progress=self.progress,
                                       device=self.device)
        names = class_names if class_names is not None else condition_names(data, schema.condition)
        # Beside what training wrote: what generation needs (kind, the condition's values, the rows' dtypes).
        write_json_atomic(out_dir / "meta.json", read_meta(out_dir) | {
            "kind": "table", "class_names": names, "arrow_schema": arrow_schema_text(data, schema)})
        self._use(out_dir)
        return self

    def sample(self, num_rows: int | None = None, class_counts: dict | None = None, seed: int = 0) -> pd.DataFrame:
        """num_rows rows, or class_counts {value of the condition column: rows}, in the training data's dtypes.

        Each row comes from its own seed: the same seed gives the same rows, and they are the rows of a
        one-shard dataset that the generate stage writes with generate.seed = seed (without rejection).
        """
        model = self._fitted()
        if class_counts is None:
            if not isinstance(num_rows, (int, np.integer)) or num_rows < 1:
                raise TableError(f"sample: give num_rows (a positive count) or class_counts (got {num_rows!r})")
            return sample_rows(model, shard_seeds(seed, 0, 0, int(num_rows)))[0]
        total = sum(class_counts.values())
        if num_rows is not None and num_rows != total:
            raise TableError(f"sample: num_rows is {num_rows} but class_counts add up to {total}")
        return self._sample_by_value(model, class_counts, seed)

    def _sample_by_value(self, model: TableModel, class_counts: dict, seed: int) -> pd.DataFrame:
        condition = model.schema.condition
        if condition is None:
            raise TableError("sample: class_counts needs a condition column; fit with condition=COLUMN")
        # As the generate stage's quota: each value's rows from that value's seed stream, values in model order.
        width = model.conditioner.spans[model.conditioner.condition].width
        parts = sorted((model.transformer.category_index(condition, value), value, count)
                       for value, count in class_counts.items())
        frames = [sample_rows(model, class_seeds(seed, 0, index, width, 0, count), [value] * count)[0]
                  for index, value, count in parts if count > 0]
        if not frames:
            raise TableError(f"sample: class_counts asks for no rows ({class_counts})")
        return pd.concat(frames, ignore_index=True)

    def save(self, path: Path | str) -> Path:
        """The model folder (safetensors + meta.json) at `path`, a folder that must not exist yet."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path}: already exists; save to a new folder")
        shutil.copytree(self._fitted_dir(), path)
        return path

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu") -> TableSynthesizer:
        """A synthesizer from a model folder: one save() wrote, or the train stage's models/<dataset>/."""
        model = load_table_model(Path(path), device)
        synthesizer = cls(TableConfig(**model.meta["table"]), seed=int(model.meta.get("seed", 0)), device=device)
        synthesizer._model_dir, synthesizer.model = Path(path), model
        return synthesizer

    @property
    def schema(self) -> TableSchema:
        return self._fitted().schema

    def _new_workdir(self) -> Path:
        self._workdir = tempfile.TemporaryDirectory(prefix="ganforge-table-")  # removed with this object
        return Path(self._workdir.name) / "model"

    def _use(self, model_dir: Path) -> None:
        self._model_dir, self.model = model_dir, load_table_model(model_dir, self.device)

    def _fitted(self) -> TableModel:
        if self.model is None:
            raise TableError("TableSynthesizer: call fit(data) or TableSynthesizer.load(path) first")
        return self.model

    def _fitted_dir(self) -> Path:
        self._fitted()
        return self._model_dir
