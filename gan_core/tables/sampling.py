"""Rows from a trained table model: each row regenerates from its seed alone, with its discriminator score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gan_core import checkpoint as ckpt
from gan_core.config import TableConfig
from gan_core.tables.model import Conditioner, TableDiscriminator, TableGenerator, activate
from gan_core.tables.personal import complete_rows
from gan_core.tables.schema import TableError, TableSchema
from gan_core.tables.transform import TableTransformer

MODEL_FORMAT = "ganforge-table-model/1"
GENERATOR, DISCRIMINATOR = "generator", "discriminator"
BATCH = 2048


@dataclass
class TableModel:
    generator: TableGenerator  # the EMA generator of the selected step
    scorer: TableDiscriminator  # one row at a time: its logit is the row's d_score
    transformer: TableTransformer
    conditioner: Conditioner
    schema: TableSchema
    cfg: TableConfig
    meta: dict


def row_noise(seeds: np.ndarray, latent_dim: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per seed: z (latent_dim normals), Gumbel uniforms (width) and two uniforms for the conditional vector,
    all from that seed's own generator, so a row does not depend on which other rows are drawn with it."""
    z = np.empty((len(seeds), latent_dim), np.float32)
    u = np.empty((len(seeds), width), np.float32)
    c = np.empty((len(seeds), 2), np.float64)
    for i, seed in enumerate(np.asarray(seeds, dtype=np.int64)):
        rng = np.random.default_rng(int(seed) % 2**64)
        z[i] = rng.standard_normal(latent_dim, dtype=np.float32)
        u[i] = rng.random(width, dtype=np.float32)
        c[i] = rng.random(2)
    return z, u, c


@torch.no_grad()
def generate_matrix(generator: TableGenerator, conditioner: Conditioner, transformer: TableTransformer,
                    cfg: TableConfig, seeds: np.ndarray, categories: np.ndarray | None = None) -> np.ndarray:
    """Activated rows (n, transformer.width) for SEEDS; `categories`: a category index of the condition
    column per row, which the rows are conditioned on and then hold exactly."""
    z, u, c = row_noise(seeds, cfg.embedding_dim, transformer.width)
    column, category = conditioner.original(c) if conditioner.dim else (np.zeros(len(seeds), int),) * 2
    if categories is not None:
        column, category = np.full(len(seeds), conditioner.condition), np.asarray(categories, dtype=np.int64)
    cond = conditioner.one_hot(column, category)
    device = next(generator.parameters()).device
    out = []
    for i in range(0, len(seeds), BATCH):
        raw = generator(torch.from_numpy(z[i:i + BATCH]).to(device), torch.from_numpy(cond[i:i + BATCH]).to(device))
        out.append(activate(raw, transformer.spans, cfg.gumbel_tau, torch.from_numpy(u[i:i + BATCH]).to(device)).cpu())
    x = torch.cat(out).numpy() if out else np.zeros((0, transformer.width), np.float32)
    if categories is not None:
        s = conditioner.spans[conditioner.condition]
        x[:, s.start:s.start + s.width] = np.eye(s.width, dtype=np.float32)[category]
    return x


def load_table_model(directory: Path, device: str = "cpu") -> TableModel:
    directory = Path(directory)
    meta = ckpt.read_meta(directory)
    if meta.get("format") != MODEL_FORMAT:
        raise TableError(f"{directory / ckpt.META_FILE}: not a table model (format {meta.get('format')!r})")
    cfg = TableConfig(**meta["table"])
    schema = TableSchema.from_json(meta["schema"])
    transformer = TableTransformer.from_state(meta["transformer"])
    conditioner = Conditioner(transformer, schema.condition)
    generator = TableGenerator(cfg, conditioner.dim, transformer.width)
    generator.load_state_dict(ckpt.load_tensors(directory, GENERATOR, device))
    scorer = TableDiscriminator(cfg, transformer.width, pac=1)
    weights = ckpt.load_tensors(directory, DISCRIMINATOR, device)
    scorer.load_state_dict({k[len("score."):]: v for k, v in weights.items() if k.startswith("score.")})
    return TableModel(generator.eval().to(device), scorer.eval().to(device), transformer, conditioner, schema, cfg, meta)


def sample_rows(model: TableModel, seeds: np.ndarray, condition_values: list | None = None
                ) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows (the user's columns, names and dtypes; identifiers and personal data generated afresh from each
    row's seed) and d_score (the row discriminator's logit, float32).

    condition_values: per row, the value of the schema's condition column that row must hold.
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    categories = None
    if condition_values is not None:
        if model.schema.condition is None or model.conditioner.condition is None:
            raise TableError("condition_values given, but the model has no condition column (prepare.condition)")
        if len(condition_values) != len(seeds):
            raise TableError(f"condition_values: {len(condition_values)} values for {len(seeds)} seeds")
        index: dict[str, int] = {}
        for v in condition_values:
            if repr(v) not in index:
                index[repr(v)] = model.transformer.category_index(model.schema.condition, v)
        categories = np.array([index[repr(v)] for v in condition_values], dtype=np.int64)
    x = generate_matrix(model.generator, model.conditioner, model.transformer, model.cfg, seeds, categories)
    rows = complete_rows(model.transformer.inverse(x), model.schema.output_names, model.schema.personal, seeds)
    return rows, score_rows(model.scorer, x)


@torch.no_grad()
def score_rows(scorer: TableDiscriminator, x: np.ndarray) -> np.ndarray:
    device = next(scorer.parameters()).device
    logits = [scorer(torch.from_numpy(x[i:i + BATCH]).to(device)).cpu() for i in range(0, len(x), BATCH)]
    return torch.cat(logits).numpy().astype(np.float32) if logits else np.zeros(0, np.float32)
