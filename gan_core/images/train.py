"""GAN training: the D step, the G step, EMA, and a loop with exact resume from safetensors checkpoints."""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gan_core import checkpoint as ckpt
from gan_core.config import Params, TrainConfig
from gan_core.errors import DataError
from gan_core.fingerprint import check_resumable, data_fingerprint, training_fingerprint
from gan_core.images import distributed
from gan_core.images.augment import diff_augment
from gan_core.images.data import ImageSet, PreparedData, default_class_names, load_prepared
from gan_core.images.features import FeatureNet, load_or_train_feature_net
from gan_core.images.metrics import frechet_distance
from gan_core.images.models import DataShape, Discriminator, Generator, count_parameters, standing_statistics
from gan_core.images.pixels import to_unit_range
from gan_core.images.sampling import latents_for_seeds, pick_device
from gan_core.progress import progress_bar
from gan_core.shards import shard_seeds

LOG_EVERY = 20  # steps per row of the loss log
LOG_COLUMNS = ["step", "d_loss", "g_loss", "d_real", "d_fake"]
SELECTION_COLUMNS = ["step", "fd_validation"]
MODULES = ("generator", "discriminator", "ema")
EMA_WARMUP = 3  # see update_ema


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads or free_cores())


def free_cores() -> int:
    """Cores this process may use minus those other processes keep busy right now.

    OpenMP threads wait for each other at every operator: one thread more than there are free
    cores made a training step 5-12x slower on a shared 2-core machine, not 2x.
    """
    cores = len(os.sched_getaffinity(0))
    return max(1, cores - round(_busy_elsewhere()))


def _busy_elsewhere(samples: int = 10) -> float:
    # Runnable threads now (Linux), not the 1-minute load average, which still counts a stage that
    # has just finished. The most of several samples: a thread too many costs far more than one
    # too few (1.7x slower on an idle 2-core machine).
    try:
        counts = []
        for _ in range(samples):
            with open("/proc/stat") as stat:
                counts.append(next(int(line.split()[1]) for line in stat if line.startswith("procs_running")) - 1)
            time.sleep(0.03)
        return max(counts)
    except (OSError, StopIteration):
        return os.getloadavg()[0]


@dataclass
class GanState:
    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: torch.Generator  # draws z and augmentations on the training device
    step: int = 0
    autocast: torch.dtype | None = None  # forward passes under autocast to this dtype (bf16 on CUDA)
    shard: distributed.BatchShard | None = None  # under torchrun: this rank's part of each global batch
    best_step: int = 0  # the selected checkpoint: lowest Frechet distance of the EMA generator so far
    best_fd: float = math.inf
    best: dict[str, dict[str, torch.Tensor]] | None = None  # G, D and EMA weights at best_step
    selection: list[dict] = field(default_factory=list)  # every selection evaluation: step, fd_validation

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.G, "discriminator": self.D, "ema": self.G_ema}


def build_state(params: Params, shape: DataShape, device: torch.device) -> GanState:
    cfg = params.train
    torch.manual_seed(cfg.seed)  # weight initialisation
    G = Generator(params.model, shape).to(device, memory_format=training_layout(device))
    D = Discriminator(params.model, shape).to(device, memory_format=training_layout(device))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # One fused kernel per step instead of a loop over parameters (CPU and CUDA alike).
    opt_g = torch.optim.Adam(generator_groups(G, cfg.lr_g, cfg.mapping_lr), lr=cfg.lr_g,
                             betas=(cfg.beta1, cfg.beta2), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), fused=True)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    return GanState(G, D, G_ema, opt_g, opt_d, noise, autocast=autocast_dtype(cfg.precision, device))


def training_layout(device: torch.device) -> torch.memory_format:
    # Channels-last feeds bf16 tensor cores on CUDA; on CPU it measured no faster for training.
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    # auto: bf16 on CUDA only. A CPU with AVX512-BF16 trained 1.5x faster in bf16 (make bench), one
    # without bf16 units 10x slower; and bf16 changes the numbers a run produces: opt in on CPUs.
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _maybe_augment(x: torch.Tensor, state: GanState, cfg: TrainConfig) -> torch.Tensor:
    if not cfg.augment:
        return x
    if state.shard is None:
        return diff_augment(x, state.noise, cfg.cutout, cfg.translate_pad, cfg.translate, cfg.augment_p)
    # Augment the whole global batch (zeros beside this rank's rows) so that every rank draws,
    # and one process would draw, the same random numbers for the same sample.
    return state.shard.local(diff_augment(state.shard.spread(x), state.noise, cfg.cutout, cfg.translate_pad,
                                         cfg.translate, cfg.augment_p))


def _latents(state: GanState, count: int, device: torch.device) -> torch.Tensor:
    world = state.shard.world if state.shard else 1
    z = torch.randn(count * world, state.G.latent_dim, device=device, generator=state.noise)
    return state.shard.local(z) if state.shard else z


@dataclass
class Generated:
    """A generated batch with its latents and labels (pairs of one label under mode seeking)."""

    images: torch.Tensor
    z: torch.Tensor
    labels: torch.Tensor | None


def generate_batch(state: GanState, labels: torch.Tensor | None, batch_size: int, cfg: TrainConfig) -> Generated:
    """G's batch for a step. With train.mode_seeking > 0 (MSGAN, Mao et al. 2019) samples 2i and 2i+1 of the
    global batch form a pair with the same label and different z (see _inverse_spread)."""
    device = next(state.G.parameters()).device
    count = 2 * (batch_size // 2) if cfg.mode_seeking else batch_size
    if cfg.mode_seeking and labels is not None:
        labels = labels[:count:2].repeat_interleave(2)
    z = _latents(state, count, device)
    return Generated(state.G(z, labels), z, labels)


def d_step(state: GanState, real: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig,
           generated: Generated | None = None) -> dict[str, float]:
    """Discriminator update: cross-entropy with 1 = real (one-sided label smoothing) and 0 = generated.

    On `generated` (the batch the G step then trains on) when given, else on a batch of its own."""
    if generated is None:
        z = _latents(state, len(real), real.device)
        with torch.no_grad():
            fake, fake_labels = state.G(z, labels), labels
    else:
        fake, fake_labels = generated.images.detach(), generated.labels
    regularise = cfg.r1_gamma > 0 and state.step % cfg.r1_every == 0
    seen_real = _maybe_augment(real, state, cfg).detach().requires_grad_(regularise)
    with state.D.observing_real():
        logits_real = state.D(seen_real, labels)
    logits_fake = state.D(_maybe_augment(fake, state, cfg), fake_labels)
    loss = (F.binary_cross_entropy_with_logits(logits_real, torch.full_like(logits_real, 1 - cfg.label_smoothing))
            + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    stats = {"train/d_loss": loss.item(), "train/d_real": torch.sigmoid(logits_real).mean().item(),
             "train/d_fake": torch.sigmoid(logits_fake).mean().item()}
    if regularise:
        # Lazy R1 (StyleGAN2): every r1_every steps, at r1_every times the weight, on the images D judged.
        penalty = r1_penalty(logits_real, seen_real)
        loss = loss + 0.5 * cfg.r1_gamma * cfg.r1_every * penalty
        stats["train/r1"] = penalty.item()
    state.opt_d.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_d.step()
    return stats


def r1_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Mescheder et al. 2018's R1: the mean over the batch of |d logit / d input|^2, kept differentiable."""
    (gradient,) = torch.autograd.grad(logits.float().sum(), inputs, create_graph=True)
    return gradient.float().square().flatten(1).sum(1).mean()


def g_step(state: GanState, labels: torch.Tensor | None, batch_size: int, cfg: TrainConfig,
           generated: Generated | None = None) -> dict[str, float]:
    """Generator update with the non-saturating loss: make D call generated samples real.

    With train.mode_seeking > 0 the loss also rewards the pairs of the batch for differing: D judges
    one sample at a time, so it cannot see a generator that maps every z of a class to the same digit.
    """
    generated = generated or generate_batch(state, labels, batch_size, cfg)
    logits = state.D(_maybe_augment(generated.images, state, cfg), generated.labels)
    loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    stats = {"train/g_loss": loss.item()}
    if cfg.mode_seeking:
        loss = loss + cfg.mode_seeking * _inverse_spread(state, generated.images, generated.z)
    state.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_g.step()
    return stats


def _inverse_spread(state: GanState, fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """1 / (mean |G(z_2i) - G(z_2i+1)| / mean |z_2i - z_2i+1|) over the pairs of the whole global batch.

    Under torchrun each rank holds whole pairs (an even slice) and the means are summed over ranks, so
    the term, and its gradient, is the one process's; scaled by the world size because DDP averages
    the ranks' gradients where one process would sum its pairs' contributions.
    """
    image_gap = distributed.global_sum((fake[0::2] - fake[1::2]).abs().sum(), state.shard) / fake[0::2].numel()
    latent_gap = distributed.global_sum((z[0::2] - z[1::2]).abs().sum(), state.shard) / z[0::2].numel()
    world = state.shard.world if state.shard else 1
    return world / (image_gap / latent_gap + 1e-5)


@torch.no_grad()
def update_ema(state: GanState, decay: float) -> None:
    # Warm-up: early on the average would be dominated by the random initial weights, so it spans
    # about the last third of the steps so far until that reaches the horizon 1 / (1 - decay).
    # (TensorFlow's (1 + n) / (10 + n) spans a ninth: it held 0.999 down to 0.9984 at step 5,500.)
    decay = min(decay, state.step / (state.step + EMA_WARMUP))
    ema, live = list(state.G_ema.parameters()), list(state.G.parameters())
    torch._foreach_lerp_(ema, live, 1.0 - decay)


def generator_groups(G: Generator, lr: float, mapping_lr: float) -> list[dict]:
    """G's parameters for Adam: the mapping network's layers at `mapping_lr` times G's rate in a group of their own
    (StyleGAN's mapping network learns at 0.01 of the rate); one group when the multiplier is 1."""
    if mapping_lr == 1.0:
        return [{"params": list(G.parameters())}]
    mapping = {id(p) for p in G.mapping.net.parameters()}
    return [{"params": [p for p in G.parameters() if id(p) not in mapping]},
            {"params": list(G.mapping.net.parameters()), "lr": lr * mapping_lr, "lr_scale": mapping_lr}]


def set_learning_rates(state: GanState, cfg: TrainConfig, total_steps: int) -> None:
    """Rates as a function of the step alone, so a resumed run follows the same schedule."""
    decay_steps = cfg.lr_decay * total_steps
    left = total_steps - state.step
    scale = min(1.0, left / decay_steps) if decay_steps else 1.0
    for optimizer, base in ((state.opt_g, cfg.lr_g), (state.opt_d, cfg.lr_d)):
        for group in optimizer.param_groups:
            group["lr"] = base * scale * group.get("lr_scale", 1.0)


def train_step(state: GanState, real: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig) -> dict[str, float]:
    """One D step, one G step and the EMA update; forward passes under autocast where the state asks."""
    with torch.autocast(real.device.type, dtype=state.autocast or torch.bfloat16, enabled=state.autocast is not None):
        generated = generate_batch(state, labels, len(real), cfg) if cfg.reuse_fake else None
        stats = d_step(state, real, labels, cfg, generated)
        stats |= g_step(state, labels, len(real), cfg, generated)
    update_ema(state, cfg.ema_decay)
    state.step += 1
    return stats


def batch_index(state: GanState, cfg: TrainConfig, count: int) -> torch.Tensor:
    """Dataset rows of the current step's batch (this rank's part of it under torchrun)."""
    epoch, within = divmod(state.step, count // cfg.batch_size)
    index = _epoch_order(cfg.seed, epoch, count)[within * cfg.batch_size:(within + 1) * cfg.batch_size]
    return state.shard.local(index) if state.shard else index


def resident_dataset(data: ImageSet, shape: DataShape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The whole dataset as one tensor on the device, in the models' memory format, and its labels."""
    images = to_unit_range(data.images).to(device).contiguous(memory_format=training_layout(device))
    labels = torch.as_tensor(data.labels).to(device) if shape.num_classes else None
    return images, labels


# --- checkpoint selection ---------------------------------------------------------------------

@dataclass
class Selector:
    """Scores the EMA generator by the Frechet distance of its samples to the real validation split.

    Measured in the evaluator network's feature space on fixed latents, so that scores of different
    steps compare. The validation split, not the test one: test images stay unseen until the
    evaluate stage reports on them.
    """

    net: FeatureNet
    reference: np.ndarray  # evaluator features of the real validation images
    z: torch.Tensor
    labels: torch.Tensor | None

    @torch.no_grad()
    def score(self, generator: Generator, batch_size: int = 2000) -> float:
        # In batches: 51,000 Fashion-MNIST samples in one call held 19 GB of activations.
        features = [self.net.embed(generator(self.z[start:start + batch_size],
                                             None if self.labels is None else self.labels[start:start + batch_size]))[0]
                    for start in range(0, len(self.z), batch_size)]
        return frechet_distance(np.concatenate(features), self.reference)


def build_selector(params: Params, data: PreparedData, shape: DataShape, device: torch.device,
                   feature_cache: Path | None) -> Selector | None:
    if not params.train.select_every:
        return None
    net = load_or_train_feature_net(data.train, params.features, feature_cache).to(device)  # never sees validation
    reference, _ = net.embed(to_unit_range(data.validation.images))
    # As many samples as training images up to train.select_samples, labels cycling through the classes: steps
    # are compared with each other, so the bias of the set's size is the same at every step. 51,000
    # Fashion-MNIST samples cost a third of a run's CPU; 10,000 rank its steps alike (docs/experiments.md).
    count = min(len(data.train.labels), params.train.select_samples)
    z, labels, _ = latents_for_seeds(shard_seeds(params.train.seed, 0, 0, count), params.model.latent_dim,
                                     shape.num_classes)
    return Selector(net, reference, z.to(device), labels.to(device) if shape.num_classes else None)


def select(state: GanState, selector: Selector) -> None:
    """Evaluate the EMA generator now; keep a copy of G, D and EMA if it is the best so far."""
    standing_statistics(state.G_ema, state.step)
    fd = selector.score(state.G_ema)
    state.selection.append({"step": state.step, "fd_validation": round(fd, 5)})
    if fd < state.best_fd:
        state.best_step, state.best_fd = state.step, fd
        state.best = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                      for name, module in state.modules().items()}


# --- checkpoints -------------------------------------------------------------------------------

def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = opt.state_dict()
    tensors = {f"{index}.{key}": value for index, entry in state["state"].items()
               for key, value in entry.items()}
    return tensors, state["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    entries: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    opt.load_state_dict({"state": entries, "param_groups": groups})


def model_meta(params: Params, shape: DataShape, state: GanState) -> dict:
    return {"format": "ganforge-checkpoint/1", "model": params.model.model_dump(),
            "shape": {"resolution": shape.resolution, "channels": shape.channels, "num_classes": shape.num_classes},
            "step": state.step,
            "parameters": {"generator": count_parameters(state.G), "discriminator": count_parameters(state.D)}}


def save_training_state(directory: Path, params: Params, shape: DataShape, state: GanState, log: list,
                        fingerprint: dict) -> None:
    """Everything an exact resume needs: weights, EMA, both optimizers, the step and the RNG state,
    and the fingerprint of what it was trained from (only a run with the same one resumes it)."""
    opt_g, groups_g = _optimizer_tensors(state.opt_g)
    opt_d, groups_d = _optimizer_tensors(state.opt_d)
    rng = {"noise": state.noise.get_state(), "torch_cpu": torch.get_rng_state()}
    meta = {**model_meta(params, shape, state), "train": params.train.model_dump(), "fingerprint": fingerprint,
            "opt_groups": {"opt_g": groups_g, "opt_d": groups_d}, "log": log,
            "selection": {"best_step": state.best_step, "best_fd": state.best_fd if state.best else None,
                          "history": state.selection}}
    tensors = {name: module.state_dict() for name, module in state.modules().items()}
    tensors |= {f"best_{name}": weights for name, weights in (state.best or {}).items()}
    ckpt.save_checkpoint(directory, tensors | {"opt_g": opt_g, "opt_d": opt_d, "rng": rng}, meta)


def load_training_state(directory: Path, state: GanState) -> list:
    device = next(state.G.parameters()).device
    meta = ckpt.read_meta(directory)
    for name, module in state.modules().items():
        module.load_state_dict(ckpt.load_tensors(directory, name, device))
    selection = meta["selection"]
    state.selection = list(selection["history"])
    if selection["best_fd"] is not None:
        state.best_step, state.best_fd = selection["best_step"], selection["best_fd"]
        state.best = {name: ckpt.load_tensors(directory, f"best_{name}", device) for name in MODULES}
    _load_optimizer(state.opt_g, ckpt.load_tensors(directory, "opt_g", device), meta["opt_groups"]["opt_g"])
    _load_optimizer(state.opt_d, ckpt.load_tensors(directory, "opt_d", device), meta["opt_groups"]["opt_d"])
    rng = ckpt.load_tensors(directory, "rng")
    state.noise.set_state(rng["noise"])
    torch.set_rng_state(rng["torch_cpu"])
    state.step = int(meta["step"])
    return list(meta["log"])


def latest_good_checkpoint(root: Path) -> Path | None:
    """The newest step-* folder whose files all match their recorded hashes; corrupt ones are skipped."""
    for directory in sorted(Path(root).glob("step-*"), reverse=True):
        try:
            meta = ckpt.read_meta(directory)
            if all(ckpt.sha256_file(directory / name) == digest for name, digest in meta["files"].items()):
                return directory
        except (ckpt.CheckpointError, OSError, KeyError):
            continue
    return None


def start_from_checkpoint(state: GanState, checkpoint_dir: Path | None, fingerprint: dict, resume: bool,
                          is_main: bool) -> list:
    """The log so far; with `resume`, the state of the newest good checkpoint if it has this run's
    fingerprint (else an error saying what differs). A fresh run deletes the old checkpoints first,
    so that a later --resume can only find this run's."""
    if checkpoint_dir is None:
        return []
    if not resume:
        if is_main:  # with the set-aside copies of interrupted saves (.step-*), which read_meta would restore
            for old in [*Path(checkpoint_dir).glob("step-*"), *Path(checkpoint_dir).glob(".step-*")]:
                shutil.rmtree(old)
        return []
    found = latest_good_checkpoint(checkpoint_dir)
    if found is None:
        return []
    check_resumable(found, ckpt.read_meta(found), fingerprint)
    return load_training_state(found, state)


def export_model(out_dir: Path, params: Params, shape: DataShape, state: GanState, extra: dict) -> None:
    """The published model: G, D and EMA weights of the selected step (else the last) plus meta.json."""
    if not state.best:
        standing_statistics(state.G_ema, state.step)
    weights = state.best or {name: module.state_dict() for name, module in state.modules().items()}
    meta = model_meta(params, shape, state) | {"step": state.best_step if state.best else state.step}
    ckpt.save_checkpoint(out_dir, weights, meta | extra)


# --- the loop -----------------------------------------------------------------------------------

def _epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    # A pure function of (seed, epoch): a resumed run sees exactly the batches it would have seen.
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Run:
    """What the loop needs besides the state: the data on the device and when to log, select and save."""

    params: Params
    shape: DataShape
    images: torch.Tensor
    labels: torch.Tensor | None
    total: int
    checkpoint_dir: Path | None
    selector: Selector | None
    fingerprint: dict  # training_fingerprint: saved with each checkpoint and the exported model


def train(params: Params, prepared: Path, out_dir: Path, *, checkpoint_dir: Path | None = None,
          loss_log: Path | None = None, selection_log: Path | None = None, feature_cache: Path | None = None,
          resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train on a prepared dataset; export the selected model to `out_dir`. `stop_after` ends early (tests, resume).

    `feature_cache` is where the evaluator network used for checkpoint selection is cached.
    """
    cfg = params.train
    set_threads(cfg.threads)
    shard = distributed.join(cfg)  # None unless started by torchrun with more than one process
    device = pick_device(cfg.device)
    prepared_data = load_prepared(prepared)
    data = prepared_data.train
    fingerprint = training_fingerprint(params, data_fingerprint(prepared))
    shape = DataShape(data.resolution, data.channels, data.num_classes if params.model.conditional else 0)
    if cfg.batch_size > len(data.labels):
        raise DataError(f"train.batch_size ({cfg.batch_size}) exceeds the {len(data.labels)} training images")
    state = build_state(params, shape, device)
    log = start_from_checkpoint(state, checkpoint_dir, fingerprint, resume, distributed.is_main(shard))
    distributed.replicate(state, shard)
    images, labels = resident_dataset(data, shape, device)  # the whole dataset stays on the device
    # Only rank 0 exports, so only it selects: other ranks would repeat the evaluator's work.
    selector = (build_selector(params, prepared_data, shape, device, feature_cache) if distributed.is_main(shard)
                else None)
    run = Run(params, shape, images, labels, cfg.epochs * (len(data.labels) // cfg.batch_size), checkpoint_dir,
              selector, fingerprint)
    started = time.perf_counter()
    _run_steps(state, run, log, stop_after, progress and distributed.is_main(shard))
    seconds = time.perf_counter() - started
    distributed.leave(shard)
    if not distributed.is_main(shard):
        return {"steps": state.step, "rank": shard.rank}
    if loss_log:
        _write_csv(loss_log, log, LOG_COLUMNS + (["r1"] if params.train.r1_gamma else []))
    if selection_log:
        _write_csv(selection_log, state.selection, SELECTION_COLUMNS)
    summary = {"steps": state.step, "total_steps": run.total, "device": device.type, "seconds": round(seconds, 1),
               "selected_step": state.best_step if state.best else state.step,
               "parameters": {"generator": count_parameters(state.G), "discriminator": count_parameters(state.D)}}
    if state.best:
        summary["selected_fd_validation"] = round(state.best_fd, 5)
    if state.step == run.total:
        names = list(data.class_names or default_class_names(shape.num_classes)) if shape.num_classes else []
        export_model(out_dir, params, shape, state, {"train": cfg.model_dump(), "summary": summary,
                                                     "fingerprint": fingerprint, "class_names": names})
    return summary


def _window_means(window: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic's mean over the steps of the window that report it (R1's only on its lazy steps)."""
    means = {}
    for name in dict.fromkeys(name for stats in window for name in stats):
        values = [stats[name] for stats in window if name in stats]
        means[name.split("/")[1]] = round(sum(values) / len(values), 5)
    return means


def _run_steps(state: GanState, run: Run, log: list, stop_after: int | None, progress: bool) -> None:
    cfg = run.params.train
    end = run.total if stop_after is None else min(run.total, stop_after)
    window: list[dict] = []
    with progress_bar(run.total, "train", initial=state.step, enabled=progress) as bar:
        while state.step < end:
            index = batch_index(state, cfg, len(run.images)).to(run.images.device)
            set_learning_rates(state, cfg, run.total)
            stats = train_step(state, run.images[index], run.labels[index] if run.labels is not None else None, cfg)
            window.append(stats)
            last = state.step == run.total
            if state.step % LOG_EVERY == 0 or last:
                row = {"step": state.step} | _window_means(window)
                log.append(row)
                window.clear()
                bar.set_postfix(d=row["d_loss"], g=row["g_loss"])
            if run.selector and (state.step % cfg.select_every == 0 or last):
                select(state, run.selector)
            if run.checkpoint_dir and distributed.is_main(state.shard) and (state.step % cfg.checkpoint_every == 0
                                                                            or state.step == end):
                save_training_state(Path(run.checkpoint_dir) / f"step-{state.step:09d}", run.params, run.shape,
                                    state, log, run.fingerprint)
            bar.update(1)
