"""Checkpoints as safetensors plus meta.json: no pickle, written atomically, verified by sha256."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or of the wrong kind."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
    """Write `<name>.safetensors` per entry of `tensors`, then meta.json (with their hashes) last.

    The whole set is built in a sibling temp folder and swapped in with a rename, so a crash at
    any point leaves either the previous checkpoint or the new one, never a mix.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _restore_aside(directory)
    for stale in directory.parent.glob(f".{directory.name}.????????"):
        shutil.rmtree(stale, ignore_errors=True)  # staging folders (mkdtemp's names) of saves that were killed
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        files = {}
        for name, state in tensors.items():
            path = staging / f"{name}.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
            files[path.name] = sha256_file(path)
        write_json_atomic(staging / META_FILE, {**meta, "files": files})
        _swap_in(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_if_absent(directory: Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> bool:
    """Save unless another process has saved `directory` first; True if this call's copy is the one kept.

    For shared caches that several processes may fill at once (DDP ranks, parallel experiments):
    each builds a private copy and renames it into place; a rename onto a folder that exists fails,
    so the first one stays and later ones are dropped. An existing folder without meta.json (a
    broken entry) is removed first.
    """
    directory = Path(directory)
    if directory.is_dir() and not (directory / META_FILE).is_file():
        shutil.rmtree(directory, ignore_errors=True)
    private = directory.with_name(f".{directory.name}.{os.getpid()}-{os.urandom(4).hex()}")
    save_checkpoint(private, tensors, meta)
    try:
        os.rename(private, directory)
        return True
    except OSError:
        if not (directory / META_FILE).is_file():
            raise
        shutil.rmtree(private, ignore_errors=True)
        return False


def _aside(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.old")


def _restore_aside(directory: Path) -> None:
    """A save killed between _swap_in's two renames left the previous checkpoint set aside: put it back."""
    old = _aside(directory)
    if not directory.exists() and old.is_dir():
        os.replace(old, directory)


def _swap_in(staging: Path, directory: Path) -> None:
    if directory.exists():
        old = _aside(directory)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, directory)


def read_meta(directory: Path) -> dict:
    _restore_aside(Path(directory))
    path = Path(directory) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg})") from None


def load_tensors(directory: Path, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load one safetensors file after checking its sha256 against meta.json."""
    directory = Path(directory)
    meta = read_meta(directory)
    filename = f"{name}.safetensors"
    expected = meta.get("files", {}).get(filename)
    path = directory / filename
    if expected is None or not path.is_file():
        raise CheckpointError(f"{path}: not part of the checkpoint")
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path}: sha256 does not match meta.json (corrupt or truncated)")
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None

def read_metrics(path: Path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
