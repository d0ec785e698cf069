"""Tiny configurations, small real data and throwaway git + DVC projects shared by the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml

from gan_core.config import Params
from gan_core.images.data import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".gitignore", "data/raw/.gitkeep",
                 "gan_core", "flows", "scripts"]

TINY = {
    "model": {"latent_dim": 8, "mapping_dim": 16, "g_channels": 16, "d_channels": 8, "d_hidden": 16},
    "train": {"epochs": 2, "batch_size": 32, "checkpoint_every": 10, "select_every": 20, "threads": 1},
    "features": {"width": 8, "dim": 16, "epochs": 2},
    "evaluate": {"num_samples": 50, "grid_rows": 2},
    "generate": {"num_samples": 120, "shard_size": 50, "batch_size": 40,
                 "rejection": {"burn_in": 200}},
    # A few training steps reach no real threshold: loose ones that still need every metric present.
    "gate": {"fd_ratio_max": 1000.0, "utility_min": 0.0, "label_consistency_min": 0.0, "memorisation_max": 1.0,
             "quality_min": 0.0, "dcr_ratio_min": 0.0},
}


def tiny_params(**overrides) -> Params:
    raw = {section: dict(values) for section, values in TINY.items()}
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        raw.setdefault(section, {})[name] = value
    return Params.model_validate(raw)


def bound_metrics(model_dir: Path, **values) -> dict:
    """metrics/eval.json as the evaluate stage writes it for the model in model_dir: good numbers (they pass
    params.yaml's gate, and so TINY's) that record the model they measured; `values` override them."""
    from gan_core.registry import model_identity

    good = {"fd_ratio": 1.3, "utility": 0.97, "label_consistency": 0.98, "memorisation": 0.001}
    return {**good, **model_identity(model_dir), **values}


def prepared_digits(directory: Path) -> Path:
    path = directory / "digits.npz"
    if not path.exists():
        prepare_dataset("bundled:digits", path, 0.15, 0.15, 0)
    return path


def use_aws_env(monkeypatch, tmp_path, env: dict[str, str]) -> None:
    """Set the AWS variables of env (a server's), clearing what a user's shell or files could add."""
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS",
                "GANFORGE_S3_MULTIPART_MB"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def write_digit_images(folder: Path, per_class: int, rgb: bool, by_class: bool = True, size: int = 16) -> list[Path]:
    """Real handwritten digits as PNGs, upscaled to size x size; RGB ones drawn in a random colour on a
    random background per image. One sub-folder per class when by_class, else flat (unlabelled)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    paths = []
    for label in range(10):
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            ink = Image.fromarray(np.uint8(digits.images[index] * 255 / 16)).resize((size, size), Image.BILINEAR)
            image = ink
            if rgb:
                alpha = np.asarray(ink, dtype=np.float64)[..., None] / 255
                fg, bg = rng.uniform(0, 255, (2, 1, 1, 3))
                image = Image.fromarray(np.uint8(np.rint(alpha * fg + (1 - alpha) * bg)), "RGB")
            path = folder / str(label) / f"{i:03d}.png" if by_class else folder / f"{label}-{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            paths.append(path)
    return paths


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An MNIST IDX file of uint8 `array` (3 dimensions: images, 1: labels); gzipped when path ends in .gz."""
    import gzip

    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def mnist_like(per_class: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grey digits (scikit-learn's, upscaled) on black, as MNIST: (N, 28, 28) uint8 and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    picks = np.concatenate([np.flatnonzero(digits.target == k)[offset:offset + per_class] for k in range(10)])
    images = [np.asarray(Image.fromarray(np.uint8(digits.images[i] * 255 / 16)).resize((20, 20), Image.BILINEAR))
              for i in picks]
    return np.pad(np.stack(images), ((0, 0), (4, 4), (4, 4))), digits.target[picks].astype(np.uint8)


# --- throwaway git + DVC projects, as a user's clone of this repository ---------------------

def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def make_project(target: Path, params: dict) -> None:
    """A fresh git + DVC project holding ganforge's pipeline, as a user's clone would."""
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target / name)
    write_params(target, params)


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_project_params(name: str) -> dict:
    """The repository's params.yaml with TINY's values, publishing under `name`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["generate"]["name"] = name
    return params


def git_commit(project: Path, env: dict, message: str, paths: tuple[str, ...] = ("-A",)) -> None:
    run(["git", "add", *paths], project, env)
    run(["git", "commit", "-qm", message], project, env)


def committed_project(target: Path, params: dict, env: dict) -> Path:
    """make_project, then git init and a first commit."""
    make_project(target, params)
    run(["git", "init", "-q"], target, env)
    git_commit(target, env, "init")
    return target
