"""Screen training recipes for Fashion-MNIST at equal CPU budgets: CPU cost per step here, quality on a GPU or here.

A CPU-second budget is what the quality benchmark compares, but a 2-core machine trains two recipes at a time,
hence the GPU path:

    python scripts/recipe_screen.py cost > cost.json           # CPU-s per step of each recipe and of DCGAN, here
    python scripts/recipe_screen.py screen cost.json 1500 OUT [RECIPE ...]  # on a GPU: 1500 / cost steps each
    python scripts/recipe_screen.py cpu 1500 OUT RECIPE[:SEED] ...  # here: 1500 CPU-s each, a core each
    python scripts/recipe_screen.py cpu-curve RECIPE SEED 1500,3000,6000 OUT.json [EMA,...]  # scored at each mark

`screen` trains every recipe (fp32, TF32 off) in a process of its own, all at once, for as many steps as the
budget buys it on one CPU thread, the learning-rate decay planned to end there; then scores its EMA generator on
10,000 samples, quantised as published, against the VALIDATION split (choosing settings never looks at the test
split) with the evaluator network. It needs `PREPARED` (the example's prepared .npz) and `FEATURES` (the cached
evaluator's folder) in its environment; `SCREEN_DEADLINE` caps each job's training in wall seconds, and a job
cut short says how many of its steps it ran. `cpu` trains each recipe as the quality benchmark does (until its
process has used the budget) and scores it in the same way.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dcgan import BATCH_SIZE, Dcgan  # noqa: E402
from benchmarks.quality import CALIBRATION, dcgan_steps, published_samples, train_dcgan, train_ganforge  # noqa: E402
from gan_core import checkpoint as ckpt  # noqa: E402
from gan_core.config import Params, load_params, override_params  # noqa: E402
from gan_core.images import metrics as m  # noqa: E402
from gan_core.images.data import load_prepared  # noqa: E402
from gan_core.images.features import FeatureNet  # noqa: E402
from gan_core.images.models import DataShape  # noqa: E402
from gan_core.images.pixels import to_unit_range  # noqa: E402
from gan_core.images.train import (  # noqa: E402
    EMA_WARMUP, batch_index, build_state, resident_dataset, set_learning_rates, train_step)

EXAMPLE = ROOT / "examples" / "fashion-mnist" / "params.yaml"
SHAPE = DataShape(32, 1, 10)
SAMPLES = 10_000
# The example before this screen began; every recipe is a change of it, so a recipe means what it meant when
# it ran whatever the example has adopted since (the mapping rate, R1, no DiffAugment and the EMAs came later).
BEFORE = {"model.grow_kernel": 3, "model.refine": True, "model.d_stem": True, "train.reuse_fake": False,
          "model.d_spectral_norm": True, "train.lr_decay": 1.0, "train.mapping_lr": 1.0, "train.r1_gamma": 0.0,
          "train.ema_decay": 0.999, "train.augment": True}
LIGHT = {"train.reuse_fake": True, "model.d_stem": False, "model.grow_kernel": 1, "model.refine": False}
LIGHT_CONST = LIGHT | {"train.lr_decay": 0.0}  # rates never decay: the EMA alone averages
NOSN = LIGHT_CONST | {"model.d_spectral_norm": False}  # the example since 0444cf8
EXAMPLE_AUG = NOSN | {"train.mapping_lr": 0.01, "train.r1_gamma": 0.1, "train.ema_decay": 0.998}  # bbbebb7 on
EXAMPLE_NOAUG = EXAMPLE_AUG | {"train.augment": False}  # d2a322b: DiffAugment dropped (docs/experiments.md)
EXAMPLE_NOW = EXAMPLE_NOAUG | {"train.ema_decay": 0.999}  # back to the 0.999 EMA
RECIPES = {
    "before": {},
    "reuse": {"train.reuse_fake": True},
    "nostem": {"model.d_stem": False},
    "grow1": {"model.grow_kernel": 1},
    "norefine": {"model.refine": False},
    "light": LIGHT,
    "light_noaug": LIGHT | {"train.augment": False},
    "light_d64": LIGHT | {"model.d_channels": 64},
    "light_d64_noaug": LIGHT | {"model.d_channels": 64, "train.augment": False},
    "light_g256": LIGHT | {"model.g_channels": 256},
    "light_g256_d64": LIGHT | {"model.g_channels": 256, "model.d_channels": 64},
    "light_refine": LIGHT | {"model.refine": True},
    "light_lr4": LIGHT | {"train.lr_g": 4e-4, "train.lr_d": 4e-4},
    "light_ms0": LIGHT | {"train.mode_seeking": 0.0},
    "light_ls0": LIGHT | {"train.label_smoothing": 0.0},
    "light_mbstd": LIGHT | {"model.minibatch_std": True},
    "light_const": LIGHT_CONST,
    "light_decay50": LIGHT | {"train.lr_decay": 0.5},
    "light_ms02": LIGHT | {"train.mode_seeking": 0.2},
    "light_const_nosn": LIGHT_CONST | {"model.d_spectral_norm": False},
    "light_const_noaug": LIGHT_CONST | {"train.augment": False},
    "wide_const": LIGHT_CONST | {"model.g_channels": 256, "model.d_channels": 64},
    "nosn_ms02": NOSN | {"train.mode_seeking": 0.2},
    "nosn_mbstd": NOSN | {"model.minibatch_std": True},
    "nosn_ls0": NOSN | {"train.label_smoothing": 0.0},
    "nosn_g192_d48": NOSN | {"model.g_channels": 192, "model.d_channels": 48},
    "nosn_gbn": NOSN | {"model.g_norm": "batch"},
    "nosn_d64": NOSN | {"model.d_channels": 64},  # DCGAN's discriminator widths
    "nosn_wide": NOSN | {"model.g_channels": 256, "model.d_channels": 64},  # DCGAN's widths in both
    "nosn_dbn": NOSN | {"model.d_norm": "batch"},  # BatchNorm in D, as DCGAN's
    "nosn_dbn_ms0": NOSN | {"model.d_norm": "batch", "train.mode_seeking": 0.0},
    "nosn_map01": NOSN | {"train.mapping_lr": 0.01},  # StyleGAN's mapping-network rate
    "nosn_map01_ms0": NOSN | {"train.mapping_lr": 0.01, "train.mode_seeking": 0.0},
    "map01_ms015": NOSN | {"train.mapping_lr": 0.01, "train.mode_seeking": 0.15},  # recall at 1,500 CPU-s
    "map01_ls0": NOSN | {"train.mapping_lr": 0.01, "train.label_smoothing": 0.0},
    "map01_g192_d48": NOSN | {"train.mapping_lr": 0.01, "model.g_channels": 192, "model.d_channels": 48},
    "map01_r1": NOSN | {"train.mapping_lr": 0.01, "train.r1_gamma": 0.1},  # lazy R1, 10x ADA's CIFAR-10 gamma
    "map01_r1g1": NOSN | {"train.mapping_lr": 0.01, "train.r1_gamma": 1.0},
    "example": EXAMPLE_NOW,
    "example_aug": EXAMPLE_AUG,  # the example with DiffAugment (translation and cutout), as until it was dropped
    "example_d48": EXAMPLE_AUG | {"model.d_channels": 48},  # D's convolutions 1.5x as wide: 1.49x the CPU a step
    "example_reflect": EXAMPLE_AUG | {"train.translate_pad": "reflect"},  # StyleGAN2-ADA's padding, not mid-grey
    "example_noaug": EXAMPLE_NOAUG,  # the screen that dropped DiffAugment ran under this name
    "example_translate": EXAMPLE_AUG | {"train.cutout": 0.0},  # translation only, no mid-grey cutout squares
    "example_cutout": EXAMPLE_AUG | {"train.translate": 0.0},  # cutout only: the padding ring stays black in D's view
    "example_shift2": EXAMPLE_AUG | {"train.translate": 0.0625},  # shifts of up to 2 pixels: the ring's width
    # Cutout only on today's example: D never sees a training image whole (memorisation), the ring stays black.
    "example_now_cutout": EXAMPLE_NOW | {"train.augment": True, "train.translate": 0.0},
    # DiffAugment on a fifth of D's images (StyleGAN2-ADA's p, fixed): lost at 1,500 CPU-s (docs/experiments.md).
    "example_now_aug_p20": EXAMPLE_NOW | {"train.augment": True, "train.augment_p": 0.2},
    "example_now_b0": EXAMPLE_NOW | {"train.beta1": 0.0, "train.beta2": 0.99},  # StyleGAN2-ADA's Adam: no better
    "example_now_ttur": EXAMPLE_NOW | {"train.lr_d": 4e-4},  # D at twice G's rate (TTUR): lost on seed 2
    "example_now_ttur4": EXAMPLE_NOW | {"train.lr_d": 8e-4},  # SAGAN's and BigGAN's 4x: even at 3,000 CPU-s
    "example_now_d64": EXAMPLE_NOW | {"model.d_channels": 64},  # DCGAN's D widths: 2.2x the CPU a step, lost
}
CURVE_EMAS = (0.9995, 0.9999)  # EMA decays a curve job keeps beside the recipe's own (train.ema_decay)


@functools.cache
def example_params() -> Params:
    """The example's params, read once: a screen scores hours after it starts, and the file may change meanwhile."""
    return load_params(EXAMPLE)


def recipe_params(name: str, seed: int, device: str) -> Params:
    changes = BEFORE | RECIPES[name] | {"train.seed": seed, "train.precision": "fp32", "train.device": device}
    return override_params(example_params(), changes)


def cost(rounds: int = 2, steps: int = 12) -> dict[str, float]:
    """The least CPU-s per step over `rounds` timings of each recipe, one thread, random batches."""
    torch.set_num_threads(1)
    real, labels = torch.rand(BATCH_SIZE, 1, 32, 32) * 2 - 1, torch.randint(0, 10, (BATCH_SIZE,))
    steppers = {"dcgan": Dcgan(32, 1, 10, 0).step}
    for name in RECIPES:
        params = recipe_params(name, 0, "cpu")
        state = build_state(params, SHAPE, torch.device("cpu"))
        steppers[name] = lambda r, l, state=state, cfg=params.train: train_step(state, r, l, cfg)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, step in steppers.items():
            for _ in range(3):
                step(real, labels)
            started = time.process_time()
            for _ in range(steps):
                step(real, labels)
            best[name] = min(best.get(name, float("inf")), (time.process_time() - started) / steps)
    return best


def train_recipe(name: str, seed: int, steps: int, images: torch.Tensor, labels: torch.Tensor,
                 deadline: float) -> tuple[torch.nn.Module, int]:
    started, device = time.time(), images.device
    if name == "dcgan":
        return dcgan_steps(images, labels, SHAPE.num_classes, seed,
                           lambda done: done < steps and time.time() - started < deadline)
    params = recipe_params(name, seed, device.type)
    state, cfg = build_state(params, SHAPE, device), params.train
    while state.step < steps and time.time() - started < deadline:
        set_learning_rates(state, cfg, steps)
        index = batch_index(state, cfg, len(images)).to(device)
        train_step(state, images[index], labels[index], cfg)
    return state.G_ema, state.step


@torch.no_grad()
def embed(net: FeatureNet, images: np.ndarray, device: torch.device) -> np.ndarray:
    return np.concatenate([net.embed(to_unit_range(images[s:s + 2000]).to(device))[0]
                           for s in range(0, len(images), 2000)])


def job(name: str, seed: int, steps: int, out: Path) -> None:
    """On the GPU if there is one: the recipe trains `steps` steps; its EMA generator scored on validation."""
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with np.load(os.environ["PREPARED"]) as data:
        train_images, train_labels, validation = data["train_images"], data["train_labels"], data["validation_images"]
    images, labels = to_unit_range(train_images).to(device), torch.as_tensor(train_labels).long().to(device)
    started = time.time()
    generator, done = train_recipe(name, seed, steps, images, labels, float(os.environ.get("SCREEN_DEADLINE", "1e9")))
    write_score(out, {"name": name, "seed": seed, "steps": steps, "done": done,
                      "train_seconds": round(time.time() - started, 1)}, generator, validation, train_images, device)


def cpu_job(name: str, seed: int, budget: float, out: Path) -> None:
    """Here, on one thread: the recipe trains until its process has used `budget` CPU seconds, as the quality
    benchmark trains it (the learning-rate decay re-planned to end there); scored on validation like job()."""
    torch.set_num_threads(1)
    prepared = load_prepared(Path(os.environ["PREPARED"]))
    if name == "dcgan":
        generator, stats = train_dcgan(prepared.train, budget, seed)
    else:
        generator, stats = train_ganforge(recipe_params(name, seed, "cpu"), prepared.train, budget, CALIBRATION)
    write_score(out, {"name": name, "seed": seed, "steps": int(stats["planned_steps"]), "done": int(stats["steps"]),
                      "train_seconds": round(stats["wall_seconds"], 1)}, generator, prepared.validation.images,
                prepared.train.images, torch.device("cpu"))


def cpu_curve(name: str, seed: int, marks: list[float], out: Path, emas: tuple[float, ...] = CURVE_EMAS) -> None:
    """As cpu_job, but scores at each of the CPU-second MARKS (the last is the budget) the recipe's EMA generator
    and one of each decay in EMAS, kept side by side on one training run; scoring's CPU is not counted."""
    torch.set_num_threads(1)
    prepared = load_prepared(Path(os.environ["PREPARED"]))
    params = recipe_params(name, seed, "cpu")
    state, cfg = build_state(params, SHAPE, torch.device("cpu")), params.train
    images, labels = resident_dataset(prepared.train, SHAPE, torch.device("cpu"))
    averages = {decay: copy.deepcopy(state.G_ema) for decay in emas if decay != cfg.ema_decay}
    reference = validation_reference(prepared.validation.images, prepared.train.images)
    started, scoring, rows = time.process_time(), 0.0, []
    for mark in marks:
        while time.process_time() - started - scoring < mark:
            index = batch_index(state, cfg, len(images))
            train_step(state, images[index], labels[index], cfg)
            for decay, average in averages.items():
                rate = 1.0 - min(decay, (state.step - 1) / (state.step - 1 + EMA_WARMUP))  # as update_ema
                torch._foreach_lerp_(list(average.parameters()), list(state.G.parameters()), rate)
        scored_from = time.process_time()
        with torch.random.fork_rng():
            for decay, generator in {cfg.ema_decay: state.G_ema, **averages}.items():
                rows.append({"name": name, "seed": seed, "cpu_seconds": mark, "steps": state.step, "ema": decay}
                            | score(generator, reference))
        scoring += time.process_time() - scored_from
        out.write_text(json.dumps(rows, indent=1))


@dataclass(frozen=True)
class ValidationReference:
    """What every score compares samples with, from the real images alone: built once per run, not per score."""

    net: FeatureNet
    features: np.ndarray  # the validation images' evaluator features
    train_rows: np.ndarray  # the training images as rows in [0, 1], for memorisation
    blank: np.ndarray  # pixels the validation images leave blank, for stray ink
    memorisation: dict[str, float]  # metrics.memorisation_reference, validation as the held-out images


def validation_reference(validation: np.ndarray, train: np.ndarray,
                         device: torch.device = torch.device("cpu")) -> ValidationReference:
    params = example_params()
    net = FeatureNet(1, 10, params.features)
    net.load_state_dict(ckpt.load_tensors(Path(os.environ["FEATURES"]), "features"))
    net = net.eval().to(device)
    held_out = validation.reshape(len(validation), -1)
    # float32, as nearest_distances computes: 0.2 GB for Fashion-MNIST's 51,000 rows, held for the whole run.
    train_rows = train.reshape(len(train), -1).astype(np.float32) / 255
    return ValidationReference(net, embed(net, validation, device), train_rows, m.blank_pixels(held_out),
                               m.memorisation_reference(train_rows, held_out / 255.0,
                                                        params.evaluate.memorisation_ratio))


def score(generator: torch.nn.Module, ref: ValidationReference,
          device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """FD, precision and recall of 10,000 published-as samples against the validation images; their stray ink, and
    memorisation against the training images with validation as the held-out reference (the evaluate stage's
    pixel-space rule, on the test split there)."""
    samples, _ = published_samples(generator, SHAPE.num_classes, SAMPLES, device)
    fake, flat = embed(ref.net, samples, device), samples.reshape(len(samples), -1)
    quality = m.prdc(ref.features, fake[:len(ref.features)], 5)
    threshold = ref.memorisation["memorisation_threshold"]
    return {"fd": m.frechet_distance(fake, ref.features), "precision": quality["precision"],
            "recall": quality["recall"], "stray_ink": m.inked_share(flat, ref.blank),
            "memorisation": m.memorised_share(flat / 255.0, ref.train_rows, threshold),
            "memorisation_real": ref.memorisation["memorisation_real"]}


def write_score(out: Path, row: dict, generator: torch.nn.Module, validation: np.ndarray, train: np.ndarray,
                device: torch.device) -> None:
    out.write_text(json.dumps(row | score(generator, validation_reference(validation, train, device), device)))


def screen(costs: dict[str, float], budget: float, out: Path, seeds: dict[str, int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed, int(budget / cpu)) for name, cpu in costs.items() for seed in range(seeds.get(name, 1))]
    processes = [subprocess.Popen([sys.executable, __file__, "job", name, str(seed), str(steps),
                                   str(out / f"{name}-s{seed}.json")]) for name, seed, steps in jobs]
    for process in processes:
        process.wait()
    print_scores(out)


def cpu_screen(budget: float, out: Path, recipes: list[str]) -> None:
    """Each NAME[:SEED] in turn, as many at once as there are cores, `budget` CPU seconds each."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(*recipe.split(":"), "0")[:2] for recipe in recipes]
    running: list[subprocess.Popen] = []
    for name, seed in jobs:
        if len(running) == (os.cpu_count() or 1):
            running.pop(0).wait()
        running.append(subprocess.Popen([sys.executable, __file__, "cpu-job", name, seed, str(budget),
                                         str(out / f"{name}-s{seed}.json")]))
    for process in running:
        process.wait()
    print_scores(out)


def print_scores(out: Path) -> None:
    rows = sorted((json.loads(f.read_text()) for f in out.glob("*-s*.json")), key=lambda r: r["fd"])
    for r in rows:
        print(f"{r['name']:18s} seed {r['seed']} steps {r['done']:6d} of {r['steps']:6d}  FD {r['fd']:.3f}  "
              f"precision {r['precision']:.3f}  recall {r['recall']:.3f}  stray ink {r['stray_ink']:.1%}  "
              f"memorised {r['memorisation']:.2%}  ({r['train_seconds']:.0f} s)")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "cost":
        print(json.dumps(cost(), indent=1))
    elif command == "job":
        job(args[0], int(args[1]), int(args[2]), Path(args[3]))
    elif command == "cpu-job":
        cpu_job(args[0], int(args[1]), float(args[2]), Path(args[3]))
    elif command == "cpu-curve":
        emas = tuple(float(decay) for decay in args[4].split(",")) if len(args) > 4 else CURVE_EMAS
        cpu_curve(args[0], int(args[1]), [float(mark) for mark in args[2].split(",")], Path(args[3]), emas)
    elif command == "cpu":
        cpu_screen(float(args[0]), Path(args[1]), args[2:])
    else:
        costs = json.loads(Path(args[0]).read_text())
        chosen = {name: costs[name] for name in (args[3:] or costs)}
        screen(chosen, float(args[1]), Path(args[2]), seeds={"dcgan": 2, "light": 2, "light_d64": 2})
