"""Datasets: load the bundled digits, an image folder or an .npz; split; save and load prepared arrays."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
BUNDLED_DIGITS = "bundled:digits"


class DataError(ValueError):
    """Input data that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, C, H, W) with integer labels (-1 when unlabelled) and the names of the classes."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = ()  # empty: unnamed ("0".."K-1" once prepared) or unlabelled

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.min() >= 0 else 0


def load_bundled_digits() -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # scikit-learn stores intensities 0..16; stretch to the full 8-bit range.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageSet(images[:, None], digits.target.astype(np.int64))


def _check_square_pow2(images: np.ndarray, source: str) -> None:
    height, width = images.shape[-2:]
    if height != width or height < 8 or height & (height - 1):
        raise DataError(f"{source}: images must be square with a power-of-two side >= 8 (got {height}x{width})")


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def load_image_folder(folder: Path) -> ImageSet:
    """Images in `folder`; a sub-folder per class gives labels, a flat folder gives none."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no PNG or JPEG images found")
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in files})
    if "." in classes and len(classes) > 1:
        raise DataError(f"{folder}: images both at the top level ({files[0].name}) and in sub-folders: "
                        "use one sub-folder per class, or none")
    labelled = classes != ["."]
    arrays, labels = [], []
    for path in files:
        array = _read_image(path)
        if arrays and array.shape != arrays[0].shape:
            raise DataError(f"{path}: {_describe_shape(array.shape)} differs from "
                            f"{files[0]}: {_describe_shape(arrays[0].shape)}; resize them all to one size")
        arrays.append(array)
        labels.append(classes.index(path.parent.relative_to(folder).as_posix()) if labelled else -1)
    stacked = np.stack(arrays)
    images = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    _check_square_pow2(images, str(folder))
    return ImageSet(np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64),
                    tuple(classes) if labelled else ())


def _describe_shape(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]} {'RGB' if len(shape) == 3 else 'grey'}"


def load_npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz:
                raise DataError(f"{path}: needs an 'images' array (N,H,W), (N,H,W,C) or (N,C,H,W)")
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz else np.full(len(images), -1)
            names = tuple(npz["class_names"].astype(str).tolist()) if "class_names" in npz else ()
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise DataError(f"{path}: 'images' must be a non-empty (N,H,W[,C]) array (got shape {images.shape})")
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be uint8 0..255 (got {images.dtype})")
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(labels)} labels for {len(images)} images")
    _check_square_pow2(images, str(path))
    return ImageSet(np.ascontiguousarray(images), labels.astype(np.int64), names)


def load_source(source: str) -> ImageSet:
    if source == BUNDLED_DIGITS:
        return load_bundled_digits()
    path = Path(source)
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path)
    if not path.exists():
        raise DataError(f"prepare.source: {source} not found (did you `dvc pull` or `dvc add` it?)")
    raise DataError(f"prepare.source: {source!r} is not {BUNDLED_DIGITS!r}, an image folder or an .npz file")


def image_hashes(images: np.ndarray) -> np.ndarray:
    """sha256 of each image's bytes: equal images, equal hashes, whatever split or file they are in."""
    return np.array([hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images])


def deduplicate(data: ImageSet) -> tuple[ImageSet, int]:
    """The first copy of each distinct image (and its label); how many later copies were dropped.

    A copy in two splits would put a training image into the validation or test set.
    """
    _, first = np.unique(image_hashes(data.images), return_index=True)
    keep = np.sort(first)
    return replace(data, images=data.images[keep], labels=data.labels[keep]), len(data.labels) - len(keep)


def split(data: ImageSet, validation_fraction: float, test_fraction: float,
          seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Seeded train / validation / test parts, stratified by label so that every class is in each.

    Each class's permutation puts held-out images first: round(n * (validation + test)) of them, the
    last round(n * test) for test. The training part is the one a single held-out share would leave.
    """
    rng = np.random.default_rng(seed)
    part = np.zeros(len(data.labels), dtype=np.int8)  # 0 train, 1 validation, 2 test
    for label in np.unique(data.labels):
        members = rng.permutation(np.flatnonzero(data.labels == label))
        held = int(round(len(members) * (validation_fraction + test_fraction)))
        test = int(round(len(members) * test_fraction))
        part[members[:held - test]], part[members[held - test:held]] = 1, 2
        if held == len(members) or held - test < 1 or test < 1:
            what = f"class {label}" if label >= 0 else "the unlabelled data"
            raise DataError(f"{what} has {len(members)} images: too few to split with prepare.validation_fraction="
                            f"{validation_fraction} and prepare.test_fraction={test_fraction} (each part needs "
                            "at least one image of each class)")
    pick = lambda index: replace(data, images=data.images[part == index], labels=data.labels[part == index])  # noqa: E731
    return pick(0), pick(1), pick(2)


@dataclass(frozen=True)
class PreparedData:
    """The prepared dataset: three disjoint stratified splits and the class names (empty when unlabelled)."""

    train: ImageSet
    validation: ImageSet
    test: ImageSet
    class_names: list[str]

    def splits(self) -> dict[str, ImageSet]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def check_disjoint(prepared: PreparedData, source: object) -> None:
    """No image of the training split in the validation or test split, compared by sha256 of its bytes."""
    train = set(image_hashes(prepared.train.images))
    for name in ("validation", "test"):
        shared = train.intersection(image_hashes(prepared.splits()[name].images))
        if shared:
            raise DataError(f"{source}: {len(shared)} images of the training split are also in the {name} "
                            "split; prepare the data again")


def save_prepared(path: Path, prepared: PreparedData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}_{field}": getattr(part, field) for name, part in prepared.splits().items()
              for field in ("images", "labels")}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **arrays, class_names=np.array(prepared.class_names, dtype=np.str_))
    os.replace(tmp, path)


def load_prepared(path: Path) -> PreparedData:
    if not Path(path).is_file():
        raise DataError(f"{path}: prepared dataset not found; run the prepare stage first")
    with np.load(path, allow_pickle=False) as npz:
        if "validation_images" not in npz:
            raise DataError(f"{path}: no validation split (prepared by an older ganforge); run the prepare "
                            "stage again")
        names = tuple(npz["class_names"].tolist()) if "class_names" in npz else ()
        parts = {name: ImageSet(npz[f"{name}_images"], npz[f"{name}_labels"], names)
                 for name in ("train", "validation", "test")}
    return PreparedData(**parts, class_names=list(names) or default_class_names(parts["train"].num_classes))


def default_class_names(num_classes: int) -> list[str]:
    return [str(k) for k in range(num_classes)]


def model_class_names(meta: dict) -> list[str]:
    """A model's class names (meta.json); "0".."K-1" for a conditional model exported before names existed."""
    names = meta.get("class_names")
    return list(names) if names is not None else default_class_names(meta["shape"]["num_classes"])


def name_classes(data: ImageSet, source: str, class_names: list[str] | None = None) -> ImageSet:
    """`data` with its class names: `class_names` (params) over the source's own, else "0".."K-1"."""
    key = "prepare.class_names" if class_names is not None else f"{source}: class_names"
    names = list(class_names if class_names is not None else data.class_names or
                 default_class_names(data.num_classes))
    if len(names) != data.num_classes:
        raise DataError(f"{key}: {len(names)} names for {data.num_classes} classes"
                        + (" (the data is unlabelled)" if not data.num_classes else ""))
    if any(not isinstance(n, str) or not n.strip() for n in names) or len(set(names)) != len(names):
        raise DataError(f"{key}: names must be distinct non-empty strings (got {names})")
    return replace(data, class_names=tuple(names))


def prepare_dataset(source: str, out_path: Path, validation_fraction: float, test_fraction: float,
                    seed: int, class_names: list[str] | None = None) -> dict:
    data, duplicates = deduplicate(name_classes(load_source(source), source, class_names))
    train, validation, test = split(data, validation_fraction, test_fraction, seed)
    prepared = PreparedData(train, validation, test, list(data.class_names))
    check_disjoint(prepared, source)
    save_prepared(Path(out_path), prepared)
    return {"train": len(train.labels), "validation": len(validation.labels), "test": len(test.labels),
            "duplicates_removed": duplicates, "resolution": data.resolution, "channels": data.channels,
            "classes": data.num_classes}
