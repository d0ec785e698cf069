"""Tables side by side with CTGAN: time to the same validation score, and quality, utility and privacy on the test rows.

Per table (tables that ship offline inside packages): exact duplicate rows dropped and the rows split three
ways as `dvc repro` splits them (gan_core.tables.data.split_rows, stratified by the target). Each contender
trains its standard recipe on the training split, on one thread (torch, BLAS, OpenMP: on a busy 2-core machine
two threads were several times slower): CTGAN (the `ctgan` package at its defaults: 300 epochs, batch 500,
pac 10) and ganforge's row GAN (TableConfig defaults: 1000 steps).

Time to quality: every 25 training steps (ganforge's `select_every`; CTGAN: every 25 of its optimizer steps)
each contender's rows are scored against the validation split by the same function, the cheap fidelity score
of gan_core.tables.fidelity (column shapes, pair trends and per-class shapes; ganforge's checkpoint selection,
which is its standard recipe, computes exactly this on 1,000 rows; CTGAN's 1,000 rows are scored from outside,
off its clock). The target is TARGET_SHARE of the score the real training rows themselves get against the
validation rows. The figure is the CPU seconds (this process's, counted from the call that fits the
transformer: both contenders fit one) at which ganforge first reaches the target over those CTGAN first reaches
it at. The budget is ganforge's standard run; CTGAN trains at least as long: its own 300 epochs, and when those
end before ganforge's run did without reaching the target, on (the same fit, more epochs) until it reaches it or
has trained as long as ganforge. Who does not reach the target is said to, with the seconds it trained: a
ratio over CTGAN's whole run is an upper bound, and ganforge not reaching it is value=inf. CPU time, not wall
time: on one thread it is the wall time an idle machine takes, and on a shared machine it does not count the
other jobs (on this project's 2-core machine, loaded 4-6x over, CTGAN's 300 epochs took 17 s of CPU and
325-508 s of wall time).

Then each generates max(train, 1000) rows from its final model (ganforge: the step its selection kept) and
both are scored on the held-out test split by gan_core.tables.evaluate: SDMetrics' quality score, utility
(HistGradientBoosting trained on generated rows, macro F1 / R^2 on the test rows, over real-trained) and the
distance to the closest training record against the test rows' own.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from benchmarks.harness import info, report
from gan_core.config import TableConfig
from gan_core.tables.data import split_rows, stratum_codes
from gan_core.tables.evaluate import evaluate_table
from gan_core.tables.fidelity import fidelity_score, real_values
from gan_core.tables.sampling import load_table_model, sample_rows
from gan_core.tables.schema import DISCRETE, TableSchema, infer_schema
from gan_core.tables.train import train_table_gan
from gan_core.tables.transform import TableTransformer

VALIDATION_FRACTION, TEST_FRACTION = 0.15, 0.25  # a larger test split than the default: less noisy figures
CTGAN_EPOCHS = 300  # CTGAN's default
MAX_EPOCHS_FACTOR = 100  # CTGAN trained on past its epochs toward the target: at most this many times them
SCORE_EVERY_STEPS = 25  # TableConfig.select_every: ganforge's own cadence, given to CTGAN too
SCORE_ROWS = 1000  # TableConfig.select_rows
SCORE_SEED = 7  # CTGAN's scoring rows come from the same noise each time, as ganforge's selection seeds do
TARGET_SHARE = 0.9  # of the real training rows' own validation score (0.95: reached by neither on anes96 in 44 s)
EVALUATORS = ["quality", "utility", "dcr", "detection"]
NULL_SUFFIX = ".is_null"
QUICK = {"tables": ["penguins"], "epochs": 10, "steps": 50}  # a check that the suite runs, not figures


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


class ValidationScore:
    """The score ganforge's checkpoint selection gives its rows, for any rows: fidelity to the validation split."""

    def __init__(self, splits: dict[str, pd.DataFrame], schema: TableSchema, seed: int):
        cfg = TableConfig()  # the transformer only codes the columns here: categories, and numbers as floats
        self.transformer = TableTransformer.fit(splits["train"], schema, cfg.gmm_components, seed)
        self.condition = schema.condition if cfg.select_conditional else None
        self.reference = real_values(self.transformer, splits["validation"])

    def __call__(self, rows: pd.DataFrame) -> float:
        fake = real_values(self.transformer, rows)
        return fidelity_score(self.transformer, self.reference, fake, self.condition)["score"]


# --- CTGAN, wrapped as SDV wraps it ----------------------------------------------------------------------

class CtganBaseline:
    def __init__(self, schema: TableSchema, epochs: int, seed: int,
                 on_epoch: Callable[[CtganBaseline, int], None] | None = None):
        self.schema, self.epochs, self.seed, self.on_epoch = schema, epochs, seed, on_epoch

    def fit(self, train: pd.DataFrame) -> CtganBaseline:
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
        self.model = _ctgan_class()(epochs=self.epochs, enable_gpu=False)
        self.model.on_epoch = (lambda epoch: self.on_epoch(self, epoch)) if self.on_epoch else None
        self.model.set_random_state(self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.model.fit(frame, discrete_columns=discrete)
            except TrainedEnough:
                pass
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

    def sample_aside(self, n: int, seed: int) -> pd.DataFrame:
        """Rows from the same noise each call, without touching the random state training goes on with."""
        with torch.random.fork_rng():
            numpy_state = np.random.get_state()
            self.model.set_random_state(seed)  # fit sets its own state again when it ends
            try:
                return self.sample(n)
            finally:
                np.random.set_state(numpy_state)


class TrainedEnough(Exception):
    """Raised by an epoch hook to end CTGAN's fit (it has no other way to stop early)."""


def _ctgan_class():
    from ctgan import CTGAN

    class EpochHookCtgan(CTGAN):
        """CTGAN calling `on_epoch(epochs done)` after each epoch. Its fit assigns `loss_values` once before
        the first epoch and once after each (a DataFrame of a row per epoch): the only hook it offers."""

        on_epoch: Callable[[int], None] | None = None

        @property
        def loss_values(self):
            return self.__dict__.get("_loss_values")

        @loss_values.setter
        def loss_values(self, value):
            self.__dict__["_loss_values"] = value
            if self.on_epoch is not None and value is not None and len(value):
                self.on_epoch(len(value))
    return EpochHookCtgan


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
    seconds: float  # CPU seconds of its standard run
    rows: pd.DataFrame  # generated by the model its standard run ends with
    note: str
    curve: list[tuple[float, float]] = field(default_factory=list)  # (CPU seconds so far, validation score)
    trained: float = 0.0  # CPU seconds it trained in all, the standard run and any time after it

    def seconds_to(self, target: float) -> float | None:
        """CPU seconds at its first score at or above `target`; None: not within its run."""
        return next((seconds for seconds, score in self.curve if score >= target), None)


def run_ctgan(splits: dict, schema: TableSchema, epochs: int, n: int, seed: int, score: ValidationScore,
              target: float, budget: float) -> Contender:
    """CTGAN's `epochs` (its standard run: the rows scored on the test split), then on, as the same fit, until
    its validation score reaches `target` or it has trained `budget` CPU seconds."""
    every = max(1, SCORE_EVERY_STEPS // max(len(splits["train"]) // 500, 1))  # epochs per 25 steps of batch 500
    most = epochs * MAX_EPOCHS_FACTOR
    curve, aside, standard = [], [0.0], {}  # aside: CPU seconds spent scoring and sampling, off CTGAN's clock

    def on_epoch(baseline: CtganBaseline, epoch: int) -> None:
        now = time.process_time()
        seconds = now - cpu - aside[0]
        if epoch % every == 0 or epoch == epochs:
            curve.append((seconds, score(baseline.sample_aside(SCORE_ROWS, SCORE_SEED))))
        if epoch == epochs:
            standard.update(seconds=seconds, rows=baseline.sample_aside(n, seed), wall=time.perf_counter() - wall)
        aside[0] += time.process_time() - now
        if epoch >= epochs and (curve[-1][1] >= target or seconds >= budget or epoch == most):
            standard["trained"], standard["epochs"] = seconds, epoch
            raise TrainedEnough

    wall, cpu = time.perf_counter(), time.process_time()
    CtganBaseline(schema, most, seed, on_epoch).fit(splits["train"])
    more = f"; trained on to epoch {standard['epochs']}" if standard["epochs"] > epochs else ""
    return Contender(standard["seconds"], standard["rows"], f"{epochs} epochs, {standard['wall']:.0f} s wall{more}",
                     curve, standard["trained"])


def run_ganforge(splits: dict, schema: TableSchema, steps: int | None, n: int, seed: int) -> Contender:
    """TableConfig's defaults; its own selection scores (on the validation split) are the curve."""
    cfg = TableConfig() if steps is None else TableConfig(steps=steps)
    stamps = {}  # step -> CPU seconds since the start, taken after the step and its selection score

    def stamp(step, total, stats):
        stamps[step] = time.process_time() - cpu

    with tempfile.TemporaryDirectory(prefix="ganforge-bench-tables-") as out:
        wall, cpu = time.perf_counter(), time.process_time()
        # The resume state inside the temporary folder too (its default is the folder's sibling, which outlived it).
        history = train_table_gan(splits["train"], splits["validation"], schema, cfg, Path(out) / "model", seed=seed,
                                  checkpoint_dir=Path(out) / "checkpoint", progress=stamp)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows, _ = sample_rows(load_table_model(Path(out) / "model"), seed * 10**6 + np.arange(n, dtype=np.int64))
    curve = [(stamps[s["step"]], s["score"]) for s in history["selection"] if s["step"] in stamps]
    return Contender(cpu, rows, f"{history['steps']} steps, checkpoint of step {history['best_step']}, "
                                f"{wall:.0f} s wall", curve, cpu)


def bench_table(name: str, table: BenchTable, epochs: int, steps: int | None, seed: int) -> dict:
    """Both contenders on one table: their time to the target and their test-split metrics."""
    splits, schema = split(table, seed)
    n = max(len(splits["train"]), 1000)
    score = ValidationScore(splits, schema, seed)
    real = score(splits["train"])  # the real training rows' own score: what a perfect generator would get
    target = TARGET_SHARE * real
    # ganforge's standard run is its budget; CTGAN's is at least as long (its own run, or trained on to ganforge's).
    ours = run_ganforge(splits, schema, steps, n, seed)
    contenders = {"ctgan": run_ctgan(splits, schema, epochs, n, seed, score, target, ours.trained), "ganforge": ours}
    info(f"{name} (seed {seed}): {len(splits['train'])}/{len(splits['validation'])}/{len(splits['test'])} rows "
         f"train/validation/test, {len(schema.columns)} columns, target {table.target!r}, {n} rows generated; "
         f"validation score target {target:.4f} ({TARGET_SHARE} of the real training rows' {real:.4f})")
    out = {"target": target}
    for who, contender in contenders.items():
        m = evaluate_table(splits["train"], splits["test"], contender.rows, schema, seed=seed, evaluators=EVALUATORS)
        out[who] = m | {"seconds": contender.seconds, "trained": contender.trained,
                        "to_target": contender.seconds_to(target)}
        utility = ", ".join(f"{k[8:]} {m[k]:.3f}" for k in m if k.startswith("utility_"))
        info(f"  {who:8s} {contender.seconds:6.1f} s CPU ({contender.note}); validation score "
             + " ".join(f"{v:.3f}@{t:.1f}s" for t, v in _spread(contender.curve))
             + f"; final rows scored alike {score(contender.rows):.4f}")
        info(f"  {'':8s} test: quality {m['quality']:.4f} (shapes {m['column_shapes']:.4f}, pairs "
             f"{m['column_pair_trends']:.4f}; real train {m['quality_floor']:.4f}), utility {m['utility']:.3f} "
             f"({utility}), DCR median {m['dcr_median']:.4f} vs holdout {m['dcr_median_holdout']:.4f}, p5 "
             f"{m['dcr_p5']:.4f} vs {m['dcr_p5_holdout']:.4f}, copies {m['dcr_copies']:.3f}, detection AUC "
             f"{m['detection_auc']:.3f}")
    return out


def _spread(curve: list, points: int = 8) -> list:
    """A few points of a curve for the log, its last included."""
    picks = sorted({round(k * (len(curve) - 1) / (points - 1)) for k in range(points)}) if curve else []
    return [curve[i] for i in picks]


def time_to_quality(name: str, results: list[dict]) -> str:
    """ganforge's CPU seconds to the target over CTGAN's (medians over rounds); who did not reach it is said."""
    def median(who, key):
        values = [r[who][key] for r in results]
        return None if any(v is None for v in values) else statistics.median(values)
    ours, theirs = median("ganforge", "to_target"), median("ctgan", "to_target")
    runs = {who: statistics.median(r[who]["trained"] for r in results) for who in ("ganforge", "ctgan")}
    said = {who: f"{t:.1f} s CPU" if t is not None else f"not reached in budget ({runs[who]:.1f} s CPU)"
            for who, t in (("ganforge", ours), ("ctgan", theirs))}
    info(f"{name}: time to validation score {statistics.median(r['target'] for r in results):.4f}: "
         f"ganforge {said['ganforge']}, CTGAN {said['ctgan']}")
    if ours is None:
        value = float("inf") if theirs is not None else float("nan")
    else:  # CTGAN not reached: its whole run is a lower bound of its time, so the ratio an upper bound
        value = ours / (theirs if theirs is not None else runs["ctgan"])
    bound = ", an upper bound" if ours is not None and theirs is None else ""
    return report(f"tabular_time_to_quality_vs_ctgan_{name}", value, 1.0, higher_is_better=False,
                  note=f"ganforge {said['ganforge']}, CTGAN {said['ctgan']}{bound}")


def run(rounds: int = 1, epochs: int = CTGAN_EPOCHS, tables: list[str] | None = None, steps: int | None = None,
        quick: bool = False) -> list[str]:
    """Each table `rounds` times (seeds 0, 1, ...: split, CTGAN and ganforge); medians over the rounds."""
    if quick:
        tables, epochs, steps = QUICK["tables"], QUICK["epochs"], QUICK["steps"]
    torch.set_num_threads(1)
    lines = []
    for name in tables or list(TABLES):
        with threadpool_limits(1):  # BLAS and OpenMP too (the mixture fits, the evaluators' classifiers)
            results = [bench_table(name, TABLES[name], epochs, steps, seed) for seed in range(rounds)]
        med = {who: {key: statistics.median(r[who][key] for r in results)
                     for key in ("quality", "utility", "dcr_median_ratio", "dcr_p5_ratio")}
               for who in ("ctgan", "ganforge")}
        ours, theirs = med["ganforge"], med["ctgan"]
        lines += [time_to_quality(name, results),
                  report(f"tabular_quality_vs_ctgan_{name}", ours["quality"] - theirs["quality"], 0.03),
                  report(f"tabular_utility_vs_ctgan_{name}", ours["utility"] / theirs["utility"], 1.0),
                  report(f"tabular_dcr_median_vs_holdout_{name}", ours["dcr_median_ratio"], 1.0),
                  report(f"tabular_dcr_p5_vs_holdout_{name}", ours["dcr_p5_ratio"], 1.0)]
        info(f"CTGAN's own DCR ratios on {name}: median {theirs['dcr_median_ratio']:.3f}, "
             f"p5 {theirs['dcr_p5_ratio']:.3f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="seeds per table (medians reported)")
    parser.add_argument("--epochs", type=int, default=CTGAN_EPOCHS,
                        help="CTGAN's epochs (fewer: a quick check, not figures to quote)")
    parser.add_argument("--steps", type=int, default=None,
                        help="ganforge's steps (default: TableConfig's; fewer: a quick check)")
    parser.add_argument("tables", nargs="*", help=f"of {', '.join(TABLES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.tables) - set(TABLES)
    if unknown:
        parser.error(f"unknown table(s) {sorted(unknown)}: choose from {', '.join(TABLES)}")
    run(args.rounds, args.epochs, args.tables or None, args.steps)


if __name__ == "__main__":
    main()
