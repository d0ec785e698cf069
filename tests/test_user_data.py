"""The user's own images: grey and RGB folders train and publish; unusable folders fail naming the file."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gan_core import cli
from gan_core.errors import DataError
from gan_core.images.data import image_hashes, load_prepared
from gan_core.layout import Layout
from gan_core.stages.evaluate import run_evaluate
from gan_core.stages.generate import run_generate, run_publish
from gan_core.stages.prepare import run_prepare
from gan_core.stages.train import run_train
from tests.helpers import prepared_digits, tiny_params, write_digit_images


@pytest.mark.parametrize("rgb, by_class", [(False, True), (True, False)], ids=["grey-by-class", "rgb-unlabelled"])
def test_image_folder_trains_and_publishes(rgb, by_class, s3_env, tmp_path):
    layout = Layout(tmp_path)
    write_digit_images(layout.raw / "mine", per_class=15, rgb=rgb, by_class=by_class)
    name = f"user-data-{'rgb' if rgb else 'grey'}"
    params = tiny_params(prepare__source=str(layout.raw / "mine"), prepare__dataset="mine", train__epochs=1,
                         generate__name=name)
    # 15 per class; labelled: 2 of each class for validation, 2 for test; unlabelled: one group of 150,
    # 45 held out: 23 validation, 22 test.
    assert run_prepare(params, layout) == {"train": 110 if by_class else 105, "validation": 20 if by_class else 23,
                                           "test": 20 if by_class else 22, "duplicates_removed": 0,
                                           "resolution": 16, "channels": 3 if rgb else 1,
                                           "classes": 10 if by_class else 0}
    assert run_train(params, layout, progress=False)["steps"] == 3
    run_evaluate(params, layout)
    uri = run_publish(params, run_generate(params, layout.generated(params), layout), "v1", s3_env.bucket, layout)

    frame = pd.read_parquet(uri)
    assert len(frame) == 120
    assert set(frame["label"]) == (set(range(10)) if by_class else {-1})
    sample = Image.open(io.BytesIO(frame["image"].iloc[0]["bytes"]))
    assert (sample.size, sample.mode) == ((16, 16), "RGB" if rgb else "L")
    manifest = cli_json(["list", name, "--long", "--bucket", s3_env.bucket])[0]
    assert manifest["dvc"]["data"]["path"] == "data/prepared/mine.npz"
    assert len(manifest["dvc"]["model"]["md5"]) == len("0123456789abcdef0123456789abcdef.dir")
    assert manifest["dvc"]["model"]["in_dvc_lock"] is False  # no dvc.lock: not run by DVC


def cli_json(argv: list[str]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    return json.loads(out.getvalue())


def test_a_corrupt_png_fails_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_digit_images(tmp_path / "data" / "raw" / "broken", per_class=3, rgb=True)
    good = (tmp_path / "data" / "raw" / "broken" / "3" / "001.png").read_bytes()
    (tmp_path / "data" / "raw" / "broken" / "3" / "bad.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "params.yaml").write_text("prepare: {source: data/raw/broken, dataset: broken}\n")
    assert cli.main(["prepare"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ganforge prepare: error: data/raw/broken/3/bad.png: not a readable image")
    assert "Traceback" not in error and not (tmp_path / "data" / "prepared").exists()


def write_png(path, size: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), 128 if mode == "L" else (10, 200, 30)).save(path)


@pytest.mark.parametrize("files, message", [
    ({}, "data/raw/x: no PNG or JPEG images found"),
    ({"a.png": (16, "L"), "cat/b.png": (16, "L")}, "data/raw/x: images both at the top level (a.png) and in sub-folders"),
], ids=["empty", "flat-and-classes"])
def test_unusable_folder_fails_naming_it(files, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "raw" / "x").mkdir(parents=True)
    for name, (size, mode) in files.items():
        write_png(tmp_path / "data" / "raw" / "x" / name, size, mode)
    with pytest.raises(DataError) as error:
        run_prepare(tiny_params(prepare__source="data/raw/x"))
    assert str(error.value).startswith(message)


def test_a_source_outside_data_raw_is_refused(tmp_path, monkeypatch):
    # dvc.yaml's prepare stage depends on data/raw only: anything else would go stale unnoticed.
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "elsewhere" / "a.png", 16)
    with pytest.raises(DataError, match=r"prepare.source: elsewhere is outside data/raw/"):
        run_prepare(tiny_params(prepare__source="elsewhere"))


def test_prepared_data_is_byte_reproducible(tmp_path):
    # prepare depends on all of data/raw: when another dataset there changes, prepare reruns, writes
    # the same bytes, and DVC reruns nothing after it.
    layout = Layout(tmp_path)
    write_digit_images(layout.raw / "mine", per_class=5, rgb=True)
    params = tiny_params(prepare__source=str(layout.raw / "mine"), prepare__dataset="mine")
    run_prepare(params, layout)
    first = layout.prepared(params).read_bytes()
    run_prepare(params, layout)
    assert layout.prepared(params).read_bytes() == first


def test_an_npz_of_rgb_images_is_a_source(tmp_path):
    layout = Layout(tmp_path)
    images = np.stack([np.asarray(Image.open(p)) for p in write_digit_images(tmp_path / "png", 7, rgb=True)])
    layout.raw.mkdir(parents=True)
    np.savez(layout.raw / "mine.npz", images=images, labels=np.repeat(np.arange(10), 7))  # (N, H, W, C)
    params = tiny_params(prepare__source=str(layout.raw / "mine.npz"), prepare__dataset="mine")
    assert run_prepare(params, layout) == {"train": 50, "validation": 10, "test": 10, "duplicates_removed": 0,
                                           "resolution": 16, "channels": 3, "classes": 10}


def test_splits_are_disjoint_stratified_and_sized_by_the_fractions(tmp_path):
    data = load_prepared(prepared_digits(tmp_path))
    sizes = {name: len(part.labels) for name, part in data.splits().items()}
    assert sizes == {"train": 1258, "validation": 270, "test": 269}  # train as with one 30 % held-out share
    everything = np.r_[data.train.labels, data.validation.labels, data.test.labels]
    for label in range(10):
        members = (everything == label).sum()
        for name, fraction in (("validation", 0.15), ("test", 0.15), ("train", 0.7)):
            assert abs((data.splits()[name].labels == label).sum() - members * fraction) <= 1, (name, label)
    hashes = [set(image_hashes(part.images)) for part in data.splits().values()]
    assert len(set.union(*hashes)) == sum(map(len, hashes)) == 1797
    assert data.class_names == [str(k) for k in range(10)]


def test_duplicates_are_dropped_before_the_split_and_tiny_classes_refused(tmp_path):
    layout = Layout(tmp_path)
    images = np.stack([np.asarray(Image.open(p)) for p in write_digit_images(tmp_path / "png", 8, rgb=False)])
    labels = np.repeat(np.arange(10), 8)
    layout.raw.mkdir(parents=True)
    # Every image of class 0 twice: without de-duplication copies would land in two splits.
    np.savez(layout.raw / "dup.npz", images=np.r_[images, images[:8]], labels=np.r_[labels, labels[:8]])
    params = tiny_params(prepare__source=str(layout.raw / "dup.npz"), prepare__dataset="dup")
    summary = run_prepare(params, layout)
    assert summary["duplicates_removed"] == 8 and summary["train"] + summary["validation"] + summary["test"] == 80
    data = load_prepared(layout.prepared(params))
    assert not set(image_hashes(data.train.images)) & set(image_hashes(np.r_[data.validation.images,
                                                                              data.test.images]))
    first_four = (np.arange(80) % 8) < 4
    np.savez(layout.raw / "small.npz", images=images[first_four], labels=labels[first_four])
    small = tiny_params(prepare__source=str(layout.raw / "small.npz"), prepare__dataset="small")
    with pytest.raises(DataError, match=r"class 0 has 4 images: too few to split with "
                                        r"prepare\.validation_fraction=0\.15 and prepare\.test_fraction=0\.15"):
        run_prepare(small, layout)
