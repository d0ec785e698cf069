"""Seconds per training step and peak memory at one resolution, default model widths, one torch thread.

`python scripts/step_cost.py 32 1` (32x32 grey) or `python scripts/step_cost.py 64 3` (64x64 RGB), optionally
followed by model settings (`d_channels=32`): one process per figure, so that its peak resident memory is
that resolution's alone.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from gan_core.config import Params
from gan_core.images.models import DataShape, count_parameters
from gan_core.images.train import build_state, train_step

WARMUP, STEPS = 3, 20


def main(resolution: int, channels: int, model: dict[str, str]) -> None:
    torch.set_num_threads(1)
    params = Params.model_validate({"train": {"device": "cpu", "threads": 1}, "model": model})
    shape = DataShape(resolution, channels, num_classes=10)
    state = build_state(params, shape, torch.device("cpu"))
    batch = params.train.batch_size
    real = torch.rand(batch, channels, resolution, resolution) * 2 - 1
    labels = torch.randint(0, 10, (batch,))
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            started = time.perf_counter()
        train_step(state, real, labels, params.train)
    seconds = (time.perf_counter() - started) / STEPS
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{resolution}x{resolution}x{channels}: {seconds:.3f} s/step at batch {batch}, peak RSS {peak_mib:.0f} MiB, "
          f"G {count_parameters(state.G) / 1e6:.2f}M D {count_parameters(state.D) / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), dict(arg.split("=", 1) for arg in sys.argv[3:]))
