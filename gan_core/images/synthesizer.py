"""ImageSynthesizer: the image GAN as a library, `fit(images)` then `sample(n)`, on the pipeline's own functions.

No S3, DVC or Prefect: an image folder, an .npz or a uint8 array in, a uint8 array out. fit prepares the
data and trains with the functions the prepare and train stages run (gan_core.images.data.prepare_dataset,
gan_core.images.train.train), so a fitted synthesizer is a model folder (safetensors + meta.json, no
pickle) that the generate stage samples from, and `load` reads the train stage's models/<dataset>/ too.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gan_core.config import FeaturesConfig, ModelConfig, TrainConfig, parse_params
from gan_core.errors import DataError
from gan_core.images.data import prepare_dataset
from gan_core.images.sampling import TrainedModel, load_model, pick_device, sample_images
from gan_core.images.train import train


@dataclass(frozen=True)
class ImageSamples:
    """Generated images as uint8 (N, H, W, C), their class index (-1 when unconditional) and class name."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]  # of the model, by index
    d_scores: np.ndarray  # the discriminator's probability of "real"
    seeds: np.ndarray  # sample i regenerates from seeds[i] alone

    def __len__(self) -> int:
        return len(self.images)

    @property
    def names(self) -> list[str | None]:
        """Each sample's class name (None when unconditional)."""
        return [self.class_names[k] if k >= 0 else None for k in self.labels.tolist()]


class ImageSynthesizer:
    """A class-conditional image GAN (gan_core.images) for images of one size.

    model, train, features: params.yaml's sections (gan_core.config); epochs overrides train.epochs.
    validation_fraction: per class, the images checkpoint selection scores on (train.select_every > 0).
    """

    def __init__(self, model: ModelConfig | None = None, train: TrainConfig | None = None,
                 features: FeaturesConfig | None = None, *, epochs: int | None = None,
                 resolution: int | str = "auto", transform: str = "pad", validation_fraction: float = 0.15,
                 progress: bool = True):
        train = (train or TrainConfig()).model_dump(mode="json") | ({} if epochs is None else {"epochs": epochs})
        # Validated as params.yaml's sections: a bad value is one line naming its key (train.epochs: ...)
        self.params = parse_params({
            "model": (model or ModelConfig()).model_dump(mode="json"), "train": train,
            "features": (features or FeaturesConfig()).model_dump(mode="json"),
            "prepare": {"resolution": resolution, "transform": transform, "validation_fraction": validation_fraction,
                        "seed": train["seed"]}}, source="ImageSynthesizer")
        self.progress = progress
        self.model: TrainedModel | None = None
        self.summary: dict | None = None  # training's steps, seconds and selected step, after fit
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._model_dir: Path | None = None

    def fit(self, data: str | Path | np.ndarray, labels=None, *, class_names: list[str] | None = None,
            model_dir: Path | str | None = None) -> ImageSynthesizer:
        """Train on `data`: an image folder (one sub-folder per class, or flat), an .npz (images, labels,
        class_names), an IDX file, or a uint8 array (N, H, W) or (N, H, W, C) with `labels` (class indices
        0..K-1; None: unconditional). Returns self."""
        self._workdir = tempfile.TemporaryDirectory(prefix="ganforge-images-")  # removed with this object
        work = Path(self._workdir.name)
        source = str(data) if isinstance(data, (str, Path)) else str(array_source(data, labels, work / "source.npz"))
        cfg = self.params.prepare
        # No test split: the library's caller keeps their own held-out images.
        prepare_dataset(source, work / "prepared.npz", cfg.validation_fraction, 0.0, cfg.seed,
                        resolution=cfg.resolution, transform=cfg.transform, class_names=class_names)
        out_dir = Path(model_dir) if model_dir is not None else work / "model"
        self.summary = train(self.params, work / "prepared.npz", out_dir, progress=self.progress)
        self._model_dir, self.model = out_dir, load_model(out_dir, pick_device(self.params.train.device))
        return self

    def sample(self, num_samples: int | None = None, class_counts: dict | None = None, seed: int = 0,
               truncation: float = 1.0) -> ImageSamples:
        """num_samples images over all classes in turn, or class_counts {class index or name: count}.

        Each image comes from its own seed: the same seed gives the same images, those of a one-shard
        dataset the generate stage writes with generate.seed = seed (without rejection).
        """
        model = self._fitted()
        out = sample_images(model, num_samples, class_counts, truncation, seed)
        names = [str(name) for name in model.meta.get("class_names") or []]
        return ImageSamples(np.ascontiguousarray(out.images.transpose(0, 2, 3, 1)), out.labels, names,
                            out.d_scores, out.seeds)

    def save(self, path: Path | str) -> Path:
        """The model folder (safetensors + meta.json) at `path`, a folder that must not exist yet."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path}: already exists; save to a new folder")
        self._fitted()
        shutil.copytree(self._model_dir, path)
        return path

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu") -> ImageSynthesizer:
        """A synthesizer from a model folder: one save() wrote, or the train stage's models/<dataset>/."""
        model = load_model(Path(path), device)
        synthesizer = cls(ModelConfig(**model.meta["model"]), TrainConfig(**model.meta.get("train", {})))
        synthesizer._model_dir, synthesizer.model = Path(path), model
        return synthesizer

    def _fitted(self) -> TrainedModel:
        if self.model is None:
            raise DataError("ImageSynthesizer: call fit(data) or ImageSynthesizer.load(path) first")
        return self.model


def array_source(images: np.ndarray, labels, path: Path) -> Path:
    """uint8 images (N, H, W[, C]) and their labels as an .npz that prepare reads like any other source."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or not len(images):
        raise DataError(f"fit: expected uint8 images (N, H, W) or (N, H, W, C) with N > 0 "
                        f"(got {images.dtype} {images.shape}); convert with np.uint8 or pass a folder")
    labels = np.full(len(images), -1) if labels is None else np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"fit: labels must be {len(images)} integer class indices (got {labels.dtype} {labels.shape})")
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise DataError(f"fit: images (N, H, W, C) need C = 1 or 3 channels (got shape {images.shape})")
    if images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)  # channels first, as load_npz keeps them unambiguous
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels.astype(np.int64))
    return path
