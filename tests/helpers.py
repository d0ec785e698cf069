"""Tiny configurations and data shared by the tests."""

from pathlib import Path

from gan_core.config import Params
from gan_core.data import prepare_dataset

TINY = {
    "model": {"latent_dim": 8, "mapping_dim": 16, "g_channels": 16, "d_channels": 8, "d_hidden": 16},
    "train": {"epochs": 2, "batch_size": 32, "checkpoint_every": 10, "threads": 1},
    "evaluate": {"num_samples": 50, "grid_rows": 2},
    "generate": {"num_samples": 120, "shard_size": 50, "batch_size": 40,
                 "rejection": {"burn_in": 200}},
}


def tiny_params(**overrides) -> Params:
    raw = {section: dict(values) for section, values in TINY.items()}
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        raw.setdefault(section, {})[name] = value
    return Params.model_validate(raw)


def prepared_digits(directory: Path) -> Path:
    path = directory / "digits.npz"
    if not path.exists():
        prepare_dataset("bundled:digits", path, 0.3, 0)
    return path
