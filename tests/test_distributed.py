"""DDP under torchrun: two CPU processes (gloo) end where one process with the same global batch ends."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gan_core.images.train import train
from tests.helpers import prepared_digits, tiny_params

ROOT = Path(__file__).resolve().parents[1]
# 19 steps of 64 = 2 x 32, with the default train settings otherwise (mode seeking on: its pairs are
# samples 2i, 2i+1 of the global batch and its means are summed over ranks, so slicing cannot change it).
# The minibatch-std layer is off: each rank takes it over its own part of the batch (models.MinibatchStd),
# so with it two processes train a model of their own, as ProGAN's and StyleGAN's groups do. Lazy R1 is on
# (off by default): its double backward goes through DDP, and each rank's mean over its reals, averaged, is the mean.
OVERRIDES = {"train__epochs": 1, "train__batch_size": 64, "train__threads": 1, "model__minibatch_std": False,
             "train__r1_gamma": 1.0, "train__r1_every": 4}


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    params = tiny_params(**OVERRIDES)
    assert params.train.mode_seeking > 0 and params.train.mode_seeking == type(params.train)().mode_seeking
    prepared_digits(tmp_path / "data" / "prepared")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "gan_core.cli", "train"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    prepared = tmp_path / "data" / "prepared" / "digits.npz"
    train(params, prepared, tmp_path / "single", progress=False)
    # Summation order differs between one batch of 64 and two of 32, and with the CPU's kernels (within 1e-5 on
    # earlier machines, up to 2.5e-4 on an AMD EPYC), and Adam turns a near-zero gradient's flipped sign into a
    # step of up to lr: the tolerance is the learning rate, not float precision.
    tolerance = params.train.lr_g
    for name in ("generator", "discriminator", "ema"):
        two = load_file(tmp_path / "models" / "digits" / f"{name}.safetensors")
        one = load_file(tmp_path / "single" / f"{name}.safetensors")
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=tolerance, msg=f"{name}.{key}")
    # The tolerance is meaningful: training moved the weights far more than it, and a process that trained on
    # batches of a rank's share (32) lands well outside it (1.1e-2 on that machine).
    trained = load_file(tmp_path / "single" / "generator.safetensors")
    initial = _initial_generator(params)
    assert max((trained[k] - initial[k]).abs().max().item() for k in initial) > 1e-3
    train(tiny_params(**(OVERRIDES | {"train__batch_size": 32})), prepared, tmp_path / "half", progress=False)
    half = load_file(tmp_path / "half" / "generator.safetensors")
    assert max((half[k] - trained[k]).abs().max().item() for k in trained) > 10 * tolerance


def _initial_generator(params) -> dict[str, torch.Tensor]:
    from gan_core.images.models import DataShape
    from gan_core.images.train import build_state

    return build_state(params, DataShape(8, 1, 10), torch.device("cpu")).G.state_dict()


def test_mode_seeking_needs_whole_pairs_on_every_rank(monkeypatch):
    from gan_core.images import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"train.batch_size \(66\) must give each of 2 processes an even number"):
        distributed.join(tiny_params(train__batch_size=66).train)
