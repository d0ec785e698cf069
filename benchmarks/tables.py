"""Tables side by side with CTGAN: the same rows, the same split, the same training time (one thread, CPU seconds).

Per table (tables that ship offline inside packages): exact duplicate rows dropped and the rows split three
ways as `dvc repro` splits them (gan_core.tables.data.split_rows, stratified by the target). CTGAN (the `ctgan`
package at its defaults: 300 epochs, batch 500, pac 10) trains on the training split and is timed; ganforge's
row GAN (TableConfig defaults) trains on the same rows with that time as its budget (table.max_seconds,
counted from the start of train_table_gan: its transformer fit included, as CTGAN's is). The time is this
process's CPU time (train_table_gan's clock=time.process_time): on one thread it is the wall time an idle
machine takes, and on a shared machine it does not count the other jobs (on this project's 2-core machine,
loaded 4-6x over, CTGAN's 300 epochs took 17 s of CPU and 325-508 s of wall time). ganforge also
reads the validation split, to select its checkpoint; CTGAN has no use for one. Both run on one thread
(torch, BLAS, OpenMP: on a busy 2-core machine two threads were several times slower). Each then generates
max(train, 1000) rows; both are scored on the held-out test split by gan_core.tables.evaluate: SDMetrics' quality score,
utility (HistGradientBoosting trained on generated rows, macro F1 / R^2 on the test rows, over real-trained)
and the distance to the closest training record against the test rows' own.

CTGAN gets what SDV's CTGANSynthesizer would do around it, so that it is not judged on what it never claimed:
a missing-value indicator column (discrete) per continuous column with missing values (CTGAN refuses them),
and on the way out values clipped to the training range, rounded to the training data's decimals, dtypes restored.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from benchmarks.harness import info, report
from gan_core.config import TableConfig
from gan_core.tables.data import split_rows, stratum_codes
from gan_core.tables.evaluate import evaluate_table
from gan_core.tables.sampling import load_table_model, sample_rows
from gan_core.tables.schema import DISCRETE, TableSchema, infer_schema
from gan_core.tables.train import train_table_gan

VALIDATION_FRACTION, TEST_FRACTION = 0.15, 0.25  # a larger test split than the default: less noisy figures
CTGAN_EPOCHS = 300  # CTGAN's default
BUDGET_SHARE = 0.95  # of CTGAN's time, for ganforge's budget
EVALUATORS = ["quality", "utility", "dcr", "detection"]
NULL_SUFFIX = ".is_null"


@dataclass(frozen=True)
class BenchTable:
    load: Callable[[], pd.DataFrame]
    target: str
    overrides: dict[str, str]


def _penguins() -> pd.DataFrame:
    from palmerpenguins import load_penguins
    return load_penguins()


def _anes96() -> pd.DataFrame:
    from statsmodels.datasets import anes96
    return anes96.load_pandas().data


# penguins: 344 rows, 8 columns, missing values in five. anes96: 944 rows, 11 columns (the 1996 American
# National Election Study; `vote` is 0 / 1: Clinton / Dole, a category, not a number).
TABLES = {"penguins": BenchTable(_penguins, "species", {}),
          "anes96": BenchTable(_anes96, "vote", {"vote": "categorical"})}


def split(table: BenchTable, seed: int) -> tuple[dict[str, pd.DataFrame], TableSchema]:
    """The distinct rows split three ways as the prepare stage splits them, and the inferred schema."""
    frame = table.load()
    schema = infer_schema(frame, overrides=table.overrides, target=table.target)
    distinct = frame.drop_duplicates(ignore_index=True)
    part = split_rows(stratum_codes(distinct, table.target), VALIDATION_FRACTION, TEST_FRACTION, seed)
    return {name: distinct[part == k].reset_index(drop=True)
            for k, name in enumerate(("train", "validation", "test"))}, schema


# --- CTGAN, wrapped as SDV wraps it ----------------------------------------------------------------------

class CtganBaseline:
    def __init__(self, schema: TableSchema, epochs: int, seed: int):
        self.schema, self.epochs, self.seed = schema, epochs, seed

    def fit(self, train: pd.DataFrame) -> CtganBaseline:
        from ctgan import CTGAN
        numeric = [c.name for c in self.schema.columns if c.kind not in DISCRETE]
        if any(c.kind == "datetime" for c in self.schema.columns):
            raise NotImplementedError("the CTGAN baseline here takes no datetime columns")
        self.dtypes = train.dtypes.to_dict()
        values = {name: pd.to_numeric(train[name]).astype(float) for name in numeric}
        self.low = {name: v.min() for name, v in values.items()}
        self.high = {name: v.max() for name, v in values.items()}
        self.decimals = {name: _decimals(v.dropna()) for name, v in values.items()}
        self.with_nulls = [name for name in numeric if values[name].isna().any()]
        frame = train.copy()
        for name in self.with_nulls:  # rdt's missing_value_generation="from_column", as SDV feeds CTGAN
            frame[name + NULL_SUFFIX] = values[name].isna().map({True: "null", False: "value"})
            frame[name] = values[name].fillna(values[name].mean())
        discrete = [c.name for c in self.schema.columns if c.kind in DISCRETE]
        discrete += [name + NULL_SUFFIX for name in self.with_nulls]
        torch.manual_seed(self.seed)
        self.model = CTGAN(epochs=self.epochs, enable_gpu=False)
        self.model.set_random_state(self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(frame, discrete_columns=discrete)
        return self

    def sample(self, n: int) -> pd.DataFrame:
        frame = self.model.sample(n)
        for name in self.low:  # SDV's enforce_min_max_values and learned rounding
            values = pd.to_numeric(frame[name]).astype(float).clip(self.low[name], self.high[name])
            values = values.round(self.decimals[name])
            if name in self.with_nulls:
                values = values.mask(frame.pop(name + NULL_SUFFIX) == "null")
            frame[name] = values
        return _with_dtypes(frame[list(self.dtypes)], self.dtypes)


def _decimals(values: pd.Series, most: int = 10) -> int:
    """The fewest decimals that hold every training value (rdt's learn_rounding_scheme)."""
    for d in range(most + 1):
        if np.allclose(values, values.round(d), rtol=0, atol=1e-9):
            return d
    return most


def _with_dtypes(frame: pd.DataFrame, dtypes: dict) -> pd.DataFrame:
    out = {}
    for name, dtype in dtypes.items():
        try:
            out[name] = frame[name].astype(dtype)
        except (TypeError, ValueError):  # integers with generated missing values
            out[name] = frame[name].astype("Int64") if pd.api.types.is_integer_dtype(dtype) else frame[name]
    return pd.DataFrame(out)


# --- one table ---------------------------------------------------------------------------------------

@dataclass
class Contender:
    seconds: float  # CPU seconds of training
    rows: pd.DataFrame
    note: str


def run_ctgan(splits: dict, schema: TableSchema, epochs: int, n: int, seed: int) -> Contender:
    wall, cpu = time.perf_counter(), time.process_time()
    model = CtganBaseline(schema, epochs, seed).fit(splits["train"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Contender(cpu, model.sample(n), f"{epochs} epochs, {wall:.0f} s wall")


def run_ganforge(splits: dict, schema: TableSchema, budget: float, n: int, seed: int) -> Contender:
    # The budget is the only stop. It is checked before each step; the last step, the last selection and the
    # export come after it: BUDGET_SHARE keeps the whole call within CTGAN's time.
    cfg = TableConfig(steps=10**7, max_seconds=BUDGET_SHARE * budget)
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-tables-") as out:
        wall, cpu = time.perf_counter(), time.process_time()
        history = train_table_gan(splits["train"], splits["validation"], schema, cfg, Path(out), seed=seed,
                                  clock=time.process_time)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows, _ = sample_rows(load_table_model(Path(out)), seed * 10**6 + np.arange(n, dtype=np.int64))
    return Contender(cpu, rows, f"{history['steps']} steps, checkpoint of step {history['best_step']}, "
                                f"{wall:.0f} s wall")


def bench_table(name: str, table: BenchTable, epochs: int, seed: int) -> dict[str, dict]:
    """Both contenders on one table: their time and test-split metrics."""
    splits, schema = split(table, seed)
    n = max(len(splits["train"]), 1000)
    ctgan = run_ctgan(splits, schema, epochs, n, seed)
    ours = run_ganforge(splits, schema, ctgan.seconds, n, seed)
    out = {}
    for who, contender in (("ctgan", ctgan), ("ganforge", ours)):
        metrics = evaluate_table(splits["train"], splits["test"], contender.rows, schema, seed=seed,
                                 evaluators=EVALUATORS)
        out[who] = metrics | {"seconds": contender.seconds, "note": contender.note}
    info(f"{name} (seed {seed}): {len(splits['train'])}/{len(splits['validation'])}/{len(splits['test'])} rows "
         f"train/validation/test, {len(schema.columns)} columns, target {table.target!r}, {n} rows generated")
    for who in ("ctgan", "ganforge"):
        m = out[who]
        utility_keys = [k for k in m if k.startswith("utility_")]
        info(f"  {who:8s} {m['seconds']:6.1f} s CPU ({m['note']}): quality {m['quality']:.4f} (shapes "
             f"{m['column_shapes']:.4f}, pairs {m['column_pair_trends']:.4f}; real train {m['quality_floor']:.4f}), "
             f"utility {m['utility']:.3f} ({', '.join(f'{k[8:]} {m[k]:.3f}' for k in utility_keys)}), "
             f"DCR median {m['dcr_median']:.4f} vs holdout {m['dcr_median_holdout']:.4f}, p5 {m['dcr_p5']:.4f} vs "
             f"{m['dcr_p5_holdout']:.4f}, copies {m['dcr_copies']:.3f}, detection AUC {m['detection_auc']:.3f}")
    return out


def run(rounds: int = 1, epochs: int = CTGAN_EPOCHS, tables: list[str] | None = None) -> list[str]:
    """Each table `rounds` times (seeds 0, 1, ...: split, CTGAN and ganforge); medians over the rounds."""
    torch.set_num_threads(1)
    lines = []
    for name in tables or list(TABLES):
        with threadpool_limits(1):  # BLAS and OpenMP too (the mixture fits, the evaluators' classifiers)
            results = [bench_table(name, TABLES[name], epochs, seed) for seed in range(rounds)]
        med = {who: {key: statistics.median(r[who][key] for r in results)
                     for key in ("quality", "utility", "seconds", "dcr_median_ratio", "dcr_p5_ratio")}
               for who in ("ctgan", "ganforge")}
        ours, theirs = med["ganforge"], med["ctgan"]
        lines += [report(f"tabular_quality_vs_ctgan_{name}", ours["quality"] - theirs["quality"], 0.03),
                  report(f"tabular_utility_vs_ctgan_{name}", ours["utility"] / theirs["utility"], 1.0),
                  report(f"tabular_train_time_vs_ctgan_{name}", ours["seconds"] / theirs["seconds"], 1.0,
                         higher_is_better=False),
                  report(f"tabular_dcr_median_vs_holdout_{name}", ours["dcr_median_ratio"], 1.0),
                  report(f"tabular_dcr_p5_vs_holdout_{name}", ours["dcr_p5_ratio"], 1.0)]
        info(f"CTGAN's own DCR ratios on {name}: median {theirs['dcr_median_ratio']:.3f}, "
             f"p5 {theirs['dcr_p5_ratio']:.3f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="seeds per table (medians reported)")
    parser.add_argument("--epochs", type=int, default=CTGAN_EPOCHS,
                        help="CTGAN's epochs, which set both budgets (fewer: a quick check, not figures to quote)")
    parser.add_argument("tables", nargs="*", help=f"of {', '.join(TABLES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.tables) - set(TABLES)
    if unknown:
        parser.error(f"unknown table(s) {sorted(unknown)}: choose from {', '.join(TABLES)}")
    run(args.rounds, args.epochs, args.tables or None)


if __name__ == "__main__":
    main()
