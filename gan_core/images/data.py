"""Datasets: load the bundled digits, an image folder or an .npz; split; save and load prepared arrays."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gan_core.errors import DataError
from gan_core.images.transform import fill_images, pick_resolution, square_array, squared_side

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
BUNDLED_DIGITS = "bundled:digits"


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


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _opened(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _rotated(img) -> bool:
    # JPEG only: its EXIF is in the header, while a PNG's getexif() decodes the whole image.
    return img.format == "JPEG" and img.getexif().get(0x0112) in ROTATED


def _header(path: Path, transform: str) -> tuple[int, bool]:
    """The squared side and whether it is RGB, from the file's header alone (nothing decoded)."""
    with _opened(path) as img:
        width, height = img.size[::-1] if _rotated(img) else img.size
        return squared_side(height, width, transform), img.mode not in GREY_MODES


def _read_image(path: Path, mode: str) -> np.ndarray:
    from PIL import ImageOps

    with _opened(path) as img:
        try:
            return np.asarray((ImageOps.exif_transpose(img) if _rotated(img) else img).convert(mode))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def class_folders(folder: Path, files: list[Path]) -> list[str]:
    return sorted({p.parent.relative_to(folder).as_posix() for p in files})


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no PNG or JPEG images found")
    return files


def load_image_folder(folder: Path, resolution: int | str = "auto", transform: str = "pad") -> ImageSet:
    """Images in `folder`; a sub-folder per class gives labels, a flat folder gives none.

    Two passes, so that memory holds one copy of the decoded data: sizes and modes from the headers, then
    each image decoded, squared and written into one preallocated array. Any RGB image makes all RGB.
    """
    files = image_files(folder)
    classes = class_folders(folder, files)
    if "." in classes and len(classes) > 1:
        raise DataError(f"{folder}: images both at the top level ({files[0].name}) and in sub-folders: "
                        "use one sub-folder per class, or none")
    sides, rgb = zip(*(_header(path, transform) for path in files))
    mode = "RGB" if any(rgb) else "L"
    images = fill_images((_read_image(path, mode) for path in files), len(files), 3 if any(rgb) else 1,
                         pick_resolution(max(sides), resolution), transform, str(folder))
    labelled = classes != ["."]
    labels = [classes.index(path.parent.relative_to(folder).as_posix()) if labelled else -1 for path in files]
    return ImageSet(images, np.asarray(labels, dtype=np.int64), tuple(classes) if labelled else ())


def load_npz(path: Path, resolution: int | str = "auto", transform: str = "pad") -> ImageSet:
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
    images = square_array(images, resolution, transform, str(path))
    return ImageSet(np.ascontiguousarray(images), labels.astype(np.int64), names)


def load_idx(path: Path, resolution: int | str = "auto", transform: str = "pad") -> ImageSet:
    from gan_core.images.idx import read_idx_pair

    images, labels = read_idx_pair(path)
    if len(images) == 0:
        raise DataError(f"{path}: no images")
    return ImageSet(square_array(images[:, None], resolution, transform, str(path)), labels)


def load_source(source: str, resolution: int | str = "auto", transform: str = "pad") -> ImageSet:
    from gan_core.images.idx import images_file_in, is_idx_images

    if source == BUNDLED_DIGITS:
        return load_bundled_digits()
    path = Path(source)
    idx_images = images_file_in(path) if path.is_dir() else path if is_idx_images(path) else None
    if idx_images is not None:
        return load_idx(idx_images, resolution, transform)
    if path.is_dir():
        return load_image_folder(path, resolution, transform)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path, resolution, transform)
    if not path.exists():
        raise DataError(f"prepare.source: {source} not found (did you `dvc pull` or `dvc add` it?)")
    raise DataError(f"prepare.source: {source!r} is not {BUNDLED_DIGITS!r}, an image folder, an .npz file or "
                    "an IDX images file (*-images-idx3-ubyte[.gz], *.idx)")


def image_hashes(images: np.ndarray) -> np.ndarray:
    """sha256 of each image's bytes: equal images, equal hashes, whatever split or file they are in."""
    return np.array([hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images])


def distinct(images: np.ndarray, exclude: set[str] = frozenset()) -> np.ndarray:
    """Indices of the first copy of each distinct image (sha256 of its bytes) not among `exclude`.

    A copy in two splits would put a training image into the validation or test set.
    """
    seen, keep = set(exclude), []
    for index, digest in enumerate(image_hashes(images)):
        if digest not in seen:
            seen.add(digest)
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


def split_parts(labels: np.ndarray, validation_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Per image 0 (train), 1 (validation) or 2 (test): seeded, stratified so that every class is in each.

    Each class's permutation puts held-out images first: round(n * (validation + test)) of them, the
    last round(n * test) for test. The training part is the one a single held-out share would leave.
    test_fraction 0 (an official test split given elsewhere) leaves no test part.
    """
    rng = np.random.default_rng(seed)
    part = np.zeros(len(labels), dtype=np.int8)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = int(round(len(members) * (validation_fraction + test_fraction)))
        test = int(round(len(members) * test_fraction))
        part[members[:held - test]], part[members[held - test:held]] = 1, 2
        if held == len(members) or held - test < 1 or (test_fraction and test < 1):
            what = f"class {label}" if label >= 0 else "the unlabelled data"
            raise DataError(f"{what} has {len(members)} images: too few to split with prepare.validation_fraction="
                            f"{validation_fraction} and prepare.test_fraction={test_fraction} (each part needs "
                            "at least one image of each class)")
    return part


def permute_rows(array: np.ndarray, order: np.ndarray) -> None:
    """array[:len(order)] = array[order] (distinct indices) in place, one row at a time along each cycle,
    so that no second copy of a large dataset is ever made."""
    full = np.concatenate([order, np.setdiff1d(np.arange(len(array)), order)])  # row i takes row full[i]
    done = full == np.arange(len(array))
    for start in np.flatnonzero(~done):
        if done[start]:
            continue
        saved, row = array[start].copy(), start
        while full[row] != start:
            array[row] = array[full[row]]
            done[row], row = True, full[row]
        array[row], done[row] = saved, True


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
                    seed: int, resolution: int | str = "auto", transform: str = "pad",
                    test_source: str | None = None, class_names: list[str] | None = None) -> dict:
    """De-duplicated, squared, split three ways and saved; with test_source, that is the test split and the
    source gives training and validation only. The splits are the source's array reordered in place."""
    data = name_classes(load_source(source, resolution, transform), source, class_names)
    official_test, test_copies = load_official_test(test_source, data, source, transform) if test_source else (None, 0)
    keep = distinct(data.images, exclude=set(image_hashes(official_test.images)) if official_test else set())
    part = split_parts(data.labels[keep], validation_fraction, 0.0 if official_test else test_fraction, seed)
    order = np.concatenate([keep[part == index] for index in range(3)])
    permute_rows(data.images, order)
    labels, bounds = data.labels[order], np.cumsum([0] + [int((part == index).sum()) for index in range(3)])
    train, validation, test = (ImageSet(data.images[a:b], labels[a:b], data.class_names)
                               for a, b in zip(bounds, bounds[1:]))
    prepared = PreparedData(train, validation, official_test or test, list(data.class_names))
    check_disjoint(prepared, source)
    save_prepared(Path(out_path), prepared)
    return {"train": len(train.labels), "validation": len(validation.labels), "test": len(prepared.test.labels),
            "duplicates_removed": len(data.labels) - len(keep) + test_copies, "resolution": train.resolution,
            "channels": train.channels, "classes": data.num_classes}


def load_official_test(test_source: str, data: ImageSet, source: str, transform: str) -> tuple[ImageSet, int]:
    """prepare.test_source at the source's resolution, de-duplicated (and how many copies were dropped); its
    channels and classes must be the source's."""
    loaded = load_source(test_source, data.resolution, transform)
    keep = distinct(loaded.images)
    test = ImageSet(loaded.images[keep], loaded.labels[keep], data.class_names)
    if test.channels != data.channels:
        raise DataError(f"prepare.test_source: {test_source} has {test.channels} channel(s), prepare.source "
                        f"{source} {data.channels}")
    ours, theirs = np.unique(data.labels).tolist(), np.unique(test.labels).tolist()
    if ours != theirs:
        raise DataError(f"prepare.test_source: {test_source} has classes {theirs}, prepare.source {source} {ours}")
    folders = [_class_folder_names(name) for name in (source, test_source)]
    if None not in folders and folders[0] != folders[1]:
        raise DataError(f"prepare.test_source: {test_source} has class folders {folders[1]}, prepare.source "
                        f"{source} {folders[0]}")
    return test, len(loaded.labels) - len(keep)


def _class_folder_names(source: str) -> list[str] | None:
    from gan_core.images.idx import images_file_in

    path = Path(source)
    if not path.is_dir() or images_file_in(path) is not None:
        return None
    return class_folders(path, image_files(path))
