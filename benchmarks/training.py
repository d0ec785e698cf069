"""Training figures: ganforge's step against the plain-PyTorch reference, and its model FLOP utilisation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import Rate, info, rates, report
from benchmarks.reference import ReferenceGan
from gan_core.config import ModelConfig, Params
from gan_core.images.data import ImageSet, load_bundled_digits
from gan_core.images.models import DataShape
from gan_core.images.train import (
    autocast_dtype,
    batch_index,
    build_state,
    pick_device,
    resident_dataset,
    set_threads,
    train_step,
)

MATMUL_SIZE = 2048  # large enough to reach the BLAS peak on a CPU, small enough for one-second rounds
CUDA_MATMUL_SIZE = 8192  # a GPU's: one 2048^3 bf16 product takes microseconds, launch and sync then weigh in
# A check that the suite runs, not figures: a tiny model and batch, few images, small matrix products.
QUICK = {"rounds": 1, "matmul": 256, "rgb": {"count": 64, "resolution": 32},
         "model": ModelConfig(latent_dim=8, mapping_dim=16, g_channels=16, d_channels=8, d_hidden=16),
         "batch_size": 16}


def random_rgb(count: int = 2048, resolution: int = 32, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 256, (count, 3, resolution, resolution), dtype=np.uint8),
                    rng.integers(0, 10, count))


def sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def ganforge_step(params: Params, data: ImageSet, device: torch.device):
    """One call = one training step exactly as the training loop runs it."""
    shape = DataShape(data.resolution, data.channels, data.num_classes)
    state = build_state(params, shape, device)
    images, labels = resident_dataset(data, shape, device)

    def step() -> float:
        index = batch_index(state, params.train, len(images)).to(device)
        train_step(state, images[index], labels[index], params.train)
        return 1.0
    return step


def reference_step(params: Params, data: ImageSet, device: torch.device):
    shape = DataShape(data.resolution, data.channels, data.num_classes)
    # pytorch/examples dcgan's default is 2 loader workers; on a 2-core machine they would only
    # compete with the step itself, so the CPU reference loads in-process (its faster choice).
    ref = ReferenceGan(params, shape, data.images, data.labels, device, workers=2 if device.type == "cuda" else 0)

    def step() -> float:
        ref.step()
        return 1.0
    return step


def step_flops(params: Params, data: ImageSet, device: torch.device) -> int:
    """Model FLOPs of one training step (both D passes and the G pass, forward and backward)."""
    step = ganforge_step(params, data, device)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def step_dtype(params: Params, device: torch.device) -> torch.dtype:
    """The precision the training step's products run in: bf16 under autocast (CUDA by default), else float32."""
    return autocast_dtype(params.train.precision, device) or torch.float32


def matmuls(device: torch.device, dtype: torch.dtype = torch.float32, size: int = MATMUL_SIZE) -> dict:
    """Matrix products in `dtype` by each path torch has on the device; the fastest is the peak.

    On a CPU both BLAS (MKL) and oneDNN: MKL's sgemm reached about half of oneDNN's rate on an
    AMD EPYC, whose convolutions (oneDNN) would otherwise appear to beat the machine's limit.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    paths = {"matmul_blas": lambda: torch.mm(a, b)}
    if device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
        paths["matmul_onednn"] = lambda: F.linear(a_dnn, b_dnn)

    def counted(product):
        def call() -> float:
            product()
            return 2.0 * size**3
        return call
    return {name: counted(product) for name, product in paths.items()}


def _bf16_contender(params: Params, data: ImageSet, device: torch.device) -> dict:
    """Where the default is float32 (a CPU), also the opt-in `train.precision: bf16`, for context."""
    if params.train.precision != "auto" or device.type == "cuda":
        return {}
    bf16 = params.model_copy(update={"train": params.train.model_copy(update={"precision": "bf16"})})
    return {"ganforge_bf16": ganforge_step(bf16, data, device)}


def _versus_reference(label: str, measured: dict[str, Rate]) -> float:
    """Print the steps per second behind a train_vs_reference figure; return the figure (wall time)."""
    ours, ref = measured["ganforge"], measured["reference"]
    text = (f"{label}: ganforge {ours.wall:.2f} steps/s, reference {ref.wall:.2f} steps/s; "
            f"per CPU-second of this process {ours.cpu / ref.cpu:.2f}x")
    if "ganforge_bf16" in measured:
        text += f"; opt-in train.precision=bf16 {measured['ganforge_bf16'].wall / ref.wall:.2f}x the reference"
    info(text)
    return ours.wall / ref.wall


def quick_params(params: Params) -> Params:
    train = params.train.model_copy(update={"batch_size": QUICK["batch_size"]})
    return params.model_copy(update={"model": QUICK["model"], "train": train})


def run(rounds: int = 9, params: Params | None = None, quick: bool = False) -> list[str]:
    """One step of each contender per round, interleaved: load from other processes that comes and
    goes over seconds then falls on all of them alike. 8x8 steps are short: four times the rounds."""
    params = params or Params()
    if quick:
        params, rounds = quick_params(params), QUICK["rounds"]
    set_threads(0)  # the free cores, for every contender alike (train.threads: 1 is for reproducibility)
    device = pick_device(params.train.device)
    sync = sync_for(device)
    matmul_size = QUICK["matmul"] if quick else CUDA_MATMUL_SIZE if device.type == "cuda" else MATMUL_SIZE
    info(f"device {device.type}, {torch.get_num_threads()} torch threads, batch {params.train.batch_size}, "
         f"precision {params.train.precision}")
    digits = load_bundled_digits()
    small = rates({"ganforge": ganforge_step(params, digits, device), "reference": reference_step(params, digits, device),
                   **_bf16_contender(params, digits, device)}, rounds=4 * rounds, seconds=0, sync=sync)
    lines = [report("train_vs_reference_8x8", _versus_reference("8x8 digits", small), 3.0)]

    rgb = random_rgb(**QUICK["rgb"]) if quick else random_rgb()
    dtype = step_dtype(params, device)
    flops = step_flops(params, rgb, device)
    large = rates({"ganforge": ganforge_step(params, rgb, device), "reference": reference_step(params, rgb, device),
                   **_bf16_contender(params, rgb, device), **matmuls(device, dtype, matmul_size)},
                  rounds=rounds, seconds=0, sync=sync)
    size = f"{rgb.resolution}x{rgb.resolution}"
    lines.append(report("train_vs_reference_32x32", _versus_reference(f"{size} RGB", large), 1.5))
    achieved = large["ganforge"].wall * flops
    products = {name.removeprefix("matmul_"): rate.wall for name, rate in large.items() if name.startswith("matmul")}
    # The peak of the precision the step runs in: bf16 tensor cores are several times float32's rate.
    info(f"{size} step: {flops / 1e9:.2f} GFLOP at {achieved / 1e9:.1f} GFLOP/s; "
         f"{str(dtype).removeprefix('torch.')} {matmul_size}^3 matmul: "
         + ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in products.items()) + " GFLOP/s")
    lines.append(report("train_mfu", achieved / max(products.values()), 0.3))
    return lines


if __name__ == "__main__":
    run()
