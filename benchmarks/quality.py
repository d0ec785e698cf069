"""Sample quality against the plain conditional DCGAN at equal CPU budgets, on Fashion-MNIST, trained side by side.

The data is prepared as examples/fashion-mnist/params.yaml prepares it (32x32, padded; the official t10k
images are the test split), from the IDX files of Debian's dataset-fashion-mnist package. For each budget the
two contenders train at once, each in its own process on one thread, so that both see the same machine load,
until that process has used the budget in CPU seconds (time.process_time, counted from building the models):

- ganforge: the example's params and ganforge's own loop functions (gan_core.images.train), its learning-rate
  schedule (train.lr_decay) planned to end at the budget; no checkpoint selection: the final EMA generator is scored;
- DCGAN: pytorch/examples' dcgan/main.py recipe made class-conditional (benchmarks/dcgan.py), with an EMA
  generator too, on the same training split held in memory as ganforge holds it.

Each then generates SAMPLES_PER_CLASS samples of each class, quantised to the pixels their PNGs would hold, and
this process scores both alike with the evaluate stage's code: the evaluator network trained on the real
training split (cached under .ganforge/cache/features), the Frechet distance to the test split's features
beside the floor of as many real training images, and precision and recall (k-NN, evaluate.knn) against the
test split. The figures are ganforge's over DCGAN's. A budget costs twice itself in CPU seconds (two
contenders), about itself in wall time on 2 otherwise idle cores: 1,500 and 6,000 take about 2.5 hours.

--quick stands scikit-learn's 8x8 digits (bundled, no Debian package) for Fashion-MNIST and a few CPU seconds
for each budget: a check that the suite runs, under the same figure names, not figures to quote.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.dcgan import BATCH_SIZE, Dcgan, DcganGenerator
from benchmarks.harness import info, report
from gan_core.config import Params, load_params
from gan_core.images import metrics as m
from gan_core.images.data import BUNDLED_DIGITS, ImageSet, PreparedData, load_prepared, prepare_dataset
from gan_core.images.features import FeatureNet, load_or_train_feature_net
from gan_core.images.models import DataShape, Generator, standing_statistics
from gan_core.images.pixels import quantise, to_unit_range
from gan_core.images.sampling import latents_for_seeds
from gan_core.images.train import batch_index, build_state, resident_dataset, set_learning_rates, train_step
from gan_core.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
EXAMPLE_PARAMS = ROOT / "examples" / "fashion-mnist" / "params.yaml"
BUDGETS = (1500, 6000)  # CPU seconds of training per contender
SAMPLES_PER_CLASS = 1000  # 10,000 samples: as many as the test split
CALIBRATION = (10, 30)  # ganforge's steps left to warm up, then the steps timed to plan its schedule
CONTENDERS = ("ganforge", "dcgan")
STATS = ("steps", "planned_steps", "cpu_seconds", "wall_seconds")
GENERATE_BATCH = 1000
# A check that the suite runs, not figures: digits, a few CPU seconds a budget, fewer samples.
QUICK = {"seconds": 2.0, "samples_per_class": 100, "calibration": (2, 5)}


# --- the contenders, each in its own process ----------------------------------------------------

def train_ganforge(params: Params, data: ImageSet, budget: float,
                   calibration: tuple[int, int]) -> tuple[Generator, dict]:
    """The training loop's steps (gan_core.images.train) until this process has trained `budget` CPU seconds."""
    cfg = params.train
    shape = DataShape(data.resolution, data.channels, data.num_classes if params.model.conditional else 0)
    started, wall = time.process_time(), time.perf_counter()
    state = build_state(params, shape, torch.device("cpu"))
    images, labels = resident_dataset(data, shape, torch.device("cpu"))
    warmup, timed = calibration
    total = None  # planned steps, re-planned each step once the calibration steps have run
    while (spent := time.process_time() - started) < budget and state.step != total:
        if state.step == warmup:
            timed_from = spent
        elif state.step >= warmup + timed:
            # The linear LR decay (train.lr_decay) needs the run's length in steps: as many as the rest of the
            # budget holds at the rate since the warm-up, re-planned every step so that the schedule ends when
            # the budget does even if the machine's load changes half-way.
            rate = (state.step - warmup) / (spent - timed_from)
            total = state.step + int((budget - spent) * rate)
        if total is not None:
            set_learning_rates(state, cfg, total)
        index = batch_index(state, cfg, len(images))
        train_step(state, images[index], labels[index] if labels is not None else None, cfg)
    standing_statistics(state.G_ema, state.step)
    return state.G_ema, {"steps": state.step, "planned_steps": total or state.step,
                         "cpu_seconds": time.process_time() - started, "wall_seconds": time.perf_counter() - wall}


def train_dcgan(data: ImageSet, budget: float, seed: int) -> tuple[DcganGenerator, dict]:
    """DCGAN steps over shuffled epochs until this process has trained `budget` CPU seconds."""
    started, wall = time.process_time(), time.perf_counter()
    images, labels = to_unit_range(data.images), torch.as_tensor(data.labels)
    generator, steps = dcgan_steps(images, labels, data.num_classes, seed,
                                   lambda _: time.process_time() - started < budget)
    return generator, {"steps": steps, "planned_steps": steps, "cpu_seconds": time.process_time() - started,
                       "wall_seconds": time.perf_counter() - wall}


def dcgan_steps(images: torch.Tensor, labels: torch.Tensor, classes: int, seed: int,
                keep_going: Callable[[int], bool]) -> tuple[DcganGenerator, int]:
    """DCGAN steps over shuffled epochs, on the images' device, while `keep_going(steps so far)`; its EMA
    generator with standing BatchNorm statistics, and the steps taken."""
    gan = Dcgan(images.shape[-1], images.shape[1], classes, seed, device=str(images.device))
    shuffle, batches = torch.Generator().manual_seed(seed), len(labels) // BATCH_SIZE
    while keep_going(gan.steps):
        within = gan.steps % batches
        if within == 0:
            order = torch.randperm(len(labels), generator=shuffle).to(images.device)
        index = order[within * BATCH_SIZE:(within + 1) * BATCH_SIZE]
        gan.step(images[index], labels[index])
    return gan.standing_statistics(seed), gan.steps


@torch.inference_mode()
def published_samples(generator: torch.nn.Module, classes: int, count: int,
                      device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """`count` samples from seeds 0.. as the generate stage draws them (labels cycling through the classes),
    as the uint8 pixels their PNGs would hold; generated on `device`, returned on the CPU."""
    z, labels, _ = latents_for_seeds(np.arange(count, dtype=np.int64), generator.latent_dim, classes)
    images = [quantise(generator(z[start:start + GENERATE_BATCH].to(device),
                                 labels[start:start + GENERATE_BATCH].to(device))).cpu()
              for start in range(0, count, GENERATE_BATCH)]
    return torch.cat(images).numpy(), labels.numpy()


def ganforge_params(seed: int) -> Params:
    params = load_params(EXAMPLE_PARAMS)
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})


def run_contender(name: str, prepared: Path, budget: float, seed: int, samples_per_class: int,
                  calibration: tuple[int, int], out: Path) -> None:
    """Train one contender on the prepared training split and save its samples and counters to `out` (.npz)."""
    torch.set_num_threads(1)
    data = load_prepared(prepared).train
    if name == "ganforge":
        generator, stats = train_ganforge(ganforge_params(seed), data, budget, calibration)
    else:
        generator, stats = train_dcgan(data, budget, seed)
    images, labels = published_samples(generator, data.num_classes, samples_per_class * data.num_classes)
    np.savez(out, images=images, labels=labels, **stats)


# --- side by side, and the scores -----------------------------------------------------------------

def prepare(folder: Path, quick: bool) -> Path:
    """The prepared dataset in `folder`: Fashion-MNIST as the example's prepare section has it (quick: digits)."""
    out = folder / "prepared.npz"
    cfg = load_params(EXAMPLE_PARAMS).prepare
    if quick:
        prepare_dataset(BUNDLED_DIGITS, out, cfg.validation_fraction, cfg.test_fraction, cfg.seed)
        return out
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(f"{FASHION}: no Fashion-MNIST IDX files; install them with "
                                "`sudo apt-get install dataset-fashion-mnist`")
    prepare_dataset(str(FASHION), out, cfg.validation_fraction, cfg.test_fraction, cfg.seed,
                    resolution=cfg.resolution, transform=cfg.transform,
                    test_source=str(FASHION / "t10k-images-idx3-ubyte.gz"), class_names=cfg.class_names)
    return out


def contender_command(name: str, prepared: Path, seconds: float, seed: int, quick: bool, out: Path) -> list[str]:
    settings = QUICK if quick else {"samples_per_class": SAMPLES_PER_CLASS, "calibration": CALIBRATION}
    per_class, (warmup, timed) = settings["samples_per_class"], settings["calibration"]
    return [sys.executable, "-m", "benchmarks.quality", "contender", name, str(prepared), "--budget", str(seconds),
            "--seed", str(seed), "--samples-per-class", str(per_class), "--calibration", f"{warmup},{timed}",
            "--out", str(out)]


def train_side_by_side(prepared: Path, budget: float, seed: int, work: Path, quick: bool) -> dict[str, Path]:
    """Both contenders at once, each in a process of its own on one thread; their samples' files."""
    seconds = QUICK["seconds"] if quick else budget
    env = os.environ | {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    outs = {name: work / f"{name}-{budget:g}-{seed}.npz" for name in CONTENDERS}
    started = {name: subprocess.Popen(contender_command(name, prepared, seconds, seed, quick, outs[name]),
                                      cwd=ROOT, env=env) for name in CONTENDERS}
    try:
        for name, process in started.items():
            if process.wait():
                raise RuntimeError(f"quality: the {name} contender exited with status {process.returncode} "
                                   "(its traceback is above)")
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return outs


@dataclass(frozen=True)
class Reference:
    """What generated samples are scored against: the evaluator network and the test split's features."""

    net: FeatureNet
    test: np.ndarray
    fd_floor: float  # the Frechet distance of as many real training images as samples to the test split
    knn: int


def reference(data: PreparedData, samples: int, quick: bool) -> Reference:
    params = load_params(EXAMPLE_PARAMS)
    net = load_or_train_feature_net(data.train, params.features, None if quick else Layout(ROOT).feature_cache)
    test = net.embed(to_unit_range(data.test.images))[0]
    rows = np.random.default_rng(0).choice(len(data.train.labels), min(samples, len(data.train.labels)), replace=False)
    # As many real images as generated ones: the Frechet distance's finite-sample bias is then the same.
    floor = m.frechet_distance(net.embed(to_unit_range(data.train.images[np.sort(rows)]))[0], test)
    return Reference(net, test, floor, params.evaluate.knn)


def score(samples: Path, ref: Reference) -> dict[str, float]:
    """FD to the test split, and precision and recall against it on as many samples as test images."""
    with np.load(samples) as saved:
        images, stats = saved["images"], {key: float(saved[key]) for key in STATS}
    features = ref.net.embed(to_unit_range(images))[0]
    quality = m.prdc(ref.test, features[:len(ref.test)], ref.knn)
    return stats | {"fd": m.frechet_distance(features, ref.test), "fd_floor": ref.fd_floor,
                    "precision": quality["precision"], "recall": quality["recall"]}


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else float("inf") if ours else float("nan")


def report_budget(budget: float, runs: list[dict[str, dict]]) -> list[str]:
    """The three figures of one budget (medians over the rounds) and each contender's numbers behind them."""
    med = {name: {key: statistics.median(run[name][key] for run in runs) for key in runs[0][name]}
           for name in CONTENDERS}
    # Each seed's own line too: a median of two hides how far apart they are.
    seeds = [(f", seed {seed}", run) for seed, run in enumerate(runs)] if len(runs) > 1 else []
    for label, scores in [*seeds, (", median" if seeds else "", med)]:
        for name, s in scores.items():
            planned = f" of {s['planned_steps']:.0f} planned" if name == "ganforge" else ""
            info(f"{budget:g} CPU-s{label}, {name}: FD {s['fd']:.3f} (floor {s['fd_floor']:.3f}), precision "
                 f"{s['precision']:.3f}, recall {s['recall']:.3f}; {s['steps']:.0f} steps{planned}, "
                 f"{s['cpu_seconds']:.1f} CPU-s, {s['wall_seconds']:.0f} s wall")
    ours, theirs = med["ganforge"], med["dcgan"]
    name = f"vs_dcgan_fashion_{budget:g}"
    return [report(f"quality_{name}", ratio(ours["fd"], theirs["fd"]), 0.5, higher_is_better=False),
            report(f"quality_precision_{name}", ratio(ours["precision"], theirs["precision"]), 1.0),
            report(f"quality_recall_{name}", ratio(ours["recall"], theirs["recall"]), 1.0)]


def run(rounds: int = 1, quick: bool = False, budgets: tuple[float, ...] = BUDGETS,
        keep: Path | None = None) -> list[str]:
    """Each budget `rounds` times (seeds 0, 1, ...), both contenders side by side; medians over the rounds.
    keep: a folder to copy each contender's samples into (CONTENDER-BUDGET-SEED.npz: images, labels, counters)."""
    if quick:
        info(f"quick: scikit-learn's 8x8 digits for Fashion-MNIST, {QUICK['seconds']:g} CPU-s for each budget")
    lines = []
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-quality-") as folder:
        work = Path(folder)
        prepared = prepare(work, quick)
        data = load_prepared(prepared)
        per_class = QUICK["samples_per_class"] if quick else SAMPLES_PER_CLASS
        ref = reference(data, per_class * data.train.num_classes, quick)  # before the contenders: no overlap
        for budget in budgets:
            runs = []
            for seed in range(rounds):
                samples = train_side_by_side(prepared, budget, seed, work, quick)
                if keep is not None:
                    for path in samples.values():
                        shutil.copy2(path, keep / path.name)
                runs.append({name: score(path, ref) for name, path in samples.items()})
            lines += report_budget(budget, runs)
    return lines


def contender_main(argv: list[str]) -> None:
    """One contender's process, as train_side_by_side starts it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality contender")
    parser.add_argument("name", choices=CONTENDERS)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--budget", type=float, required=True, help="CPU seconds of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples-per-class", type=int, default=SAMPLES_PER_CLASS)
    parser.add_argument("--calibration", default=",".join(map(str, CALIBRATION)), help="WARMUP,TIMED steps")
    parser.add_argument("--out", type=Path, required=True, help=".npz of the samples and counters")
    args = parser.parse_args(argv)
    warmup, timed = map(int, args.calibration.split(","))
    run_contender(args.name, args.prepared, args.budget, args.seed, args.samples_per_class, (warmup, timed), args.out)


def main(argv: list[str]) -> None:
    if argv[:1] == ["contender"]:
        contender_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, seconds: a check, not figures")
    parser.add_argument("--rounds", type=int, default=1, help="seeds per budget (medians reported)")
    parser.add_argument("--budgets", type=float, nargs="+", default=BUDGETS, help="CPU seconds per contender")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy each contender's samples here (to look at, or to score with another evaluator)")
    args = parser.parse_args(argv)
    run(args.rounds, args.quick, tuple(args.budgets), args.keep)


if __name__ == "__main__":
    main(sys.argv[1:])
