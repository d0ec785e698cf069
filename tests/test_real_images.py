"""Real images at real size: MNIST IDX files, 28x28, non-square and mixed-size folders, an official test
split, bounded memory, and 64x64 RGB through training and publishing."""

from __future__ import annotations

import gzip
import io
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from gan_core.config import load_params
from gan_core.errors import DataError
from gan_core.images.data import image_hashes, load_image_folder, load_prepared, prepare_dataset
from gan_core.images.transform import fit_square
from gan_core.layout import Layout
from gan_core.stages.generate import run_generate, run_publish
from gan_core.stages.prepare import run_prepare
from gan_core.stages.train import run_train
from tests.helpers import ROOT, mnist_like, tiny_params, write_digit_images, write_idx


def write_mnist_pair(folder, prefix: str, per_class: int, gz: bool, offset: int = 0):
    images, labels = mnist_like(per_class, offset)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images), images, labels


@pytest.mark.parametrize("gz, name_the_file", [(True, True), (False, False)], ids=["gzip-file", "plain-folder"])
def test_28x28_idx_files_prepare_to_32x32_with_their_labels(gz, name_the_file, tmp_path):
    layout = Layout(tmp_path)
    images_file, images, labels = write_mnist_pair(layout.raw / "mnist", "train", per_class=10, gz=gz)
    source = images_file if name_the_file else layout.raw / "mnist"
    params = tiny_params(prepare__source=str(source), prepare__dataset="mnist")
    assert run_prepare(params, layout) == {"train": 70, "validation": 10, "test": 20, "duplicates_removed": 0,
                                           "resolution": 32, "channels": 1, "classes": 10}
    label_of = dict(zip(image_hashes(images), labels))
    prepared = load_prepared(layout.prepared(params))
    for part in prepared.splits().values():
        assert part.images.shape[1:] == (1, 32, 32)
        centre = part.images[:, 0, 2:30, 2:30]  # padded 2 pixels each side, with black, the border's median
        assert [label_of[h] for h in image_hashes(centre)] == part.labels.tolist()
        assert part.images.sum() == centre.astype(np.int64).sum()


def test_an_official_test_split_is_the_test_part(tmp_path):
    layout = Layout(tmp_path)
    folder = layout.raw / "fashion"
    _, train_images, _ = write_mnist_pair(folder, "train", per_class=10, gz=True)
    test_file, test_images, _ = write_mnist_pair(folder, "t10k", per_class=4, gz=True, offset=10)
    # One official test image also among the training images: it must leave training, not the test split.
    write_idx(folder / "train-images-idx3-ubyte.gz", np.r_[train_images[:-1], test_images[:1]])
    params = tiny_params(prepare__source=str(folder), prepare__test_source=str(test_file),
                         prepare__dataset="fashion", prepare__test_fraction=0.5)
    summary = run_prepare(params, layout)
    assert summary == {"train": 80, "validation": 19, "test": 40, "duplicates_removed": 1, "resolution": 32,
                       "channels": 1, "classes": 10}  # test_fraction ignored: validation 15 % of the rest
    prepared = load_prepared(layout.prepared(params))
    assert sorted(image_hashes(prepared.test.images[:, 0, 2:30, 2:30])) == sorted(image_hashes(test_images))
    assert np.bincount(prepared.test.labels).tolist() == [4] * 10


def test_a_test_source_of_other_classes_is_refused(tmp_path):
    layout = Layout(tmp_path)
    write_mnist_pair(layout.raw / "a", "train", per_class=5, gz=False)
    images, labels = mnist_like(3, 5)
    write_idx(layout.raw / "b" / "t10k-images-idx3-ubyte", images[labels < 9])
    write_idx(layout.raw / "b" / "t10k-labels-idx1-ubyte", labels[labels < 9])
    params = tiny_params(prepare__source=str(layout.raw / "a"), prepare__test_source=str(layout.raw / "b"))
    with pytest.raises(DataError, match=r"prepare.test_source: .*/b has classes \[0, 1, 2, 3, 4, 5, 6, 7, 8\], "
                                        r"prepare.source .*/a \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        run_prepare(params, layout)


def _break(folder, how: str) -> tuple[str, str]:
    """Damage a written train pair as `how` says; the file the error must name and what it must say."""
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if how == "bad-magic":
        images.write_bytes(labels.read_bytes())
        return images, "not an IDX images (idx3) file (magic 0x00000801, expected 0x00000803)"
    if how == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return images, "truncated: 78300 of the 78400 bytes its header announces (100 x 28 x 28)"
    if how == "count-mismatch":
        write_idx(labels, np.zeros(99, np.uint8))
        return labels, f"99 labels for the 100 images of {images}"
    images.with_suffix(".gz").write_bytes(gzip.compress(images.read_bytes())[:500])
    images.unlink()
    return images.with_suffix(".gz"), "not a readable gzip file"


@pytest.mark.parametrize("how", ["bad-magic", "truncated", "count-mismatch", "broken-gzip"])
def test_a_bad_idx_file_fails_naming_it(how, tmp_path):
    layout = Layout(tmp_path)
    write_mnist_pair(layout.raw / "bad", "train", per_class=10, gz=False)
    path, message = _break(layout.raw / "bad", how)
    with pytest.raises(DataError) as error:
        run_prepare(tiny_params(prepare__source=str(layout.raw / "bad")), layout)
    assert str(error.value).startswith(f"{path}: {message}")


def write_rectangles(folder, sizes: list[tuple[int, int]], mode: str = "L", prefix: str = "") -> list[np.ndarray]:
    """Images of the given (height, width) on a black background with a bright random interior, labelled by
    index parity."""
    rng = np.random.default_rng(len(sizes))
    arrays = []
    for index, (height, width) in enumerate(sizes):
        array = np.zeros((height, width, 3) if mode == "RGB" else (height, width), np.uint8)
        array[1:-1, 1:-1] = rng.integers(100, 256, array[1:-1, 1:-1].shape)
        path = folder / ("even" if index % 2 == 0 else "odd") / f"{prefix}{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        arrays.append(array)
    return arrays


@pytest.mark.parametrize("transform, resolution, box", [
    ("pad", 32, (10, 6, 12, 20)),  # centred on a 32x32 black canvas, pixels unchanged
    ("center-crop", 16, None),  # the middle 12x12, scaled to 16x16
    ("resize", 32, (6, 0, 19, 32)),  # 20 wide -> 32 wide, 12 high -> 19 high, black above and below
], ids=["pad", "center-crop", "resize"])
def test_non_square_images_become_square(transform, resolution, box, tmp_path):
    layout = Layout(tmp_path)
    originals = write_rectangles(layout.raw / "wide", [(12, 20)] * 20)
    params = tiny_params(prepare__source=str(layout.raw / "wide"), prepare__dataset="wide",
                         prepare__transform=transform)
    assert run_prepare(params, layout)["resolution"] == resolution
    images = load_prepared(layout.prepared(params)).train.images
    assert images.shape[1:] == (1, resolution, resolution)
    if box:
        top, left, height, width = box
        inside = np.zeros((resolution, resolution), bool)
        inside[top:top + height, left:left + width] = True
        assert (images[:, 0][:, ~inside] == 0).all() and (images[:, 0][:, inside] > 0).mean() > 0.6
    if transform == "pad":
        assert set(image_hashes(images[:, 0, 10:22, 6:26])) <= set(image_hashes(np.stack(originals)))


def test_a_mixed_size_folder_with_grey_and_rgb_is_accepted_and_deterministic(tmp_path):
    layout = Layout(tmp_path)
    sizes = [(8 + 3 * i, 40 - 2 * i) for i in range(12)]
    write_rectangles(layout.raw / "mixed", sizes)
    write_rectangles(layout.raw / "mixed", [(30, 30)] * 4, mode="RGB", prefix="rgb")  # any RGB: all RGB
    params = tiny_params(prepare__source=str(layout.raw / "mixed"), prepare__dataset="mixed",
                         prepare__validation_fraction=0.3, prepare__test_fraction=0.3)
    summary = run_prepare(params, layout)
    assert (summary["resolution"], summary["channels"], summary["classes"]) == (64, 3, 2)  # largest side 41
    first = layout.prepared(params).read_bytes()
    run_prepare(params, layout)
    assert layout.prepared(params).read_bytes() == first
    everything = np.concatenate([part.images for part in load_prepared(layout.prepared(params)).splits().values()])
    grey = ((everything[:, 0] == everything[:, 1]) & (everything[:, 1] == everything[:, 2])).all(axis=(1, 2))
    assert grey.sum() == 12  # the grey images, made RGB; the 4 RGB ones have colour


def test_a_folder_is_read_into_one_array_with_bounded_memory(tmp_path):
    sizes = [(40 + i % 9, 60 - i % 7) for i in range(300)]
    write_rectangles(tmp_path / "many", sizes, mode="RGB")
    tracemalloc.start()
    try:
        data = load_image_folder(tmp_path / "many")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.images.shape == (300, 3, 64, 64)
    assert peak < 2 * data.images.nbytes, (peak, data.images.nbytes)
    # The whole prepare too: the splits are that array reordered in place, not copies of it.
    tracemalloc.start()
    try:
        prepare_dataset(str(tmp_path / "many"), tmp_path / "many.npz", 0.15, 0.15, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * data.images.nbytes, (peak, data.images.nbytes)
    files = sorted((tmp_path / "many").rglob("*.png"))
    simple = np.stack([fit_square(np.asarray(Image.open(p).convert("RGB")), 64, "pad") for p in files])
    assert np.array_equal(data.images, simple.transpose(0, 3, 1, 2))


def test_64x64_rgb_folder_trains_and_publishes(s3_env, tmp_path):
    layout = Layout(tmp_path)
    write_digit_images(layout.raw / "rgb64", per_class=8, rgb=True, size=64)
    params = tiny_params(prepare__source=str(layout.raw / "rgb64"), prepare__dataset="rgb64", train__epochs=3,
                         generate__name="rgb64-synthetic")
    assert run_prepare(params, layout)["resolution"] == 64
    assert run_train(params, layout, progress=False)["steps"] == 3  # 60 training images, batch 32
    # No evaluate stage: at 64x64 RGB its evaluators took 6 minutes here even with TINY settings.
    uri = run_publish(params, run_generate(params, layout.generated(params), layout), "v1", s3_env.bucket, layout)
    frame = pd.read_parquet(uri)
    assert len(frame) == 120 and set(frame["label"]) == set(range(10))
    sample = np.asarray(Image.open(io.BytesIO(frame["image"].iloc[0]["bytes"])))
    assert sample.shape == (64, 64, 3) and sample.std() > 0


def test_the_fashion_mnist_parameters_parse_and_have_every_key_of_params_yaml():
    # Copied over params.yaml, so dvc.yaml's ${...} and params lists must find the same keys.
    example = ROOT / "examples" / "fashion-mnist" / "params.yaml"
    params = load_params(example)
    assert params.prepare.test_source == "data/raw/fashion-mnist/t10k-images-idx3-ubyte.gz"
    keys = lambda tree, at="": {f"{at}{k}" for k, v in tree.items()} | {  # noqa: E731
        key for k, v in tree.items() if isinstance(v, dict) for key in keys(v, f"{at}{k}.")}
    # Every key of params.yaml, plus the names IDX files lack (optional, so commented out in params.yaml).
    extra = keys(yaml.safe_load(example.read_text())) - keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert extra == {"prepare.class_names"}
    assert keys(yaml.safe_load((ROOT / "params.yaml").read_text())) <= keys(yaml.safe_load(example.read_text()))
    assert params.prepare.class_names[0] == "T-shirt/top" and len(params.prepare.class_names) == 10


def test_a_jpeg_is_turned_upright_by_its_exif_orientation(tmp_path):
    layout = Layout(tmp_path)
    for index in range(10):
        array = np.zeros((8, 40), np.uint8)  # stored wide; orientation 6: shown rotated, tall
        array[1:-1, 1:-1] = 150 + index * 10
        exif = Image.Exif()
        exif[0x0112] = 6
        path = layout.raw / "photos" / f"{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, quality=95, exif=exif)
    params = tiny_params(prepare__source=str(layout.raw / "photos"), prepare__dataset="photos",
                         prepare__transform="resize", prepare__resolution=32)
    run_prepare(params, layout)
    images = load_prepared(layout.prepared(params)).train.images[:, 0].astype(int)
    assert images.shape[1:] == (32, 32)  # 40 high -> 32, 8 wide -> 6, centred from column 13
    assert images[:, 8:24, 14:18].min() > 100 and images[:, :, :10].max() < 30 and images[:, :, 22:].max() < 30
