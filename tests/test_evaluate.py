"""Evaluators and the evaluator network: known answers when the "generated" set is real data, and the cache."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from gan_core import checkpoint as ckpt
from gan_core import fingerprint
from gan_core.errors import DataError
from gan_core.fingerprint import LineageError
from gan_core.images import metrics as m
from gan_core.images.data import ImageSet, PreparedData, check_disjoint, image_hashes, load_prepared
from gan_core.images.evaluate import EVALUATORS, EvalContext, cached_accuracy, evaluate
from gan_core.images.features import cache_key, load_or_train_feature_net
from gan_core.images.pixels import to_unit_range
from gan_core.images.sampling import SampleBatch, load_model
from gan_core.images.train import train
from gan_core.layout import Layout
from gan_core.stages.evaluate import run_evaluate
from gan_core.stages.prepare import run_prepare
from gan_core.stages.train import run_train
from tests.helpers import ROOT, prepared_digits, tiny_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_digits(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def split(prepared):
    return load_prepared(prepared)


@pytest.fixture(scope="module")
def net(split, tmp_path_factory):
    return load_or_train_feature_net(split.train, tiny_params().features, tmp_path_factory.mktemp("cache"))


def as_generated(images: ImageSet) -> SampleBatch:
    count = len(images.labels)
    return SampleBatch(np.arange(count), to_unit_range(images.images), images.labels, np.zeros(count),
                       np.zeros(count))


def context(split, net, fake: ImageSet, tmp_path) -> EvalContext:
    params = tiny_params()
    return EvalContext(None, split.train, split.test, as_generated(fake), tmp_path, params.evaluate,
                       params.generate.rejection, net, other_held_out=split.validation)


def test_copies_of_the_training_set_score_as_the_training_set(split, net, tmp_path):
    train_set = split.train
    ctx = context(split, net, train_set, tmp_path)
    frechet = EVALUATORS["frechet"](ctx)
    assert frechet["fd"] == pytest.approx(frechet["fd_floor"], rel=1e-9) and frechet["fd_ratio"] == pytest.approx(1.0)
    assert frechet["fd_ratio_sd"] == pytest.approx(0.0, abs=1e-9)  # 1 on any other test set too
    assert EVALUATORS["memorisation"](ctx)["memorisation"] == 1.0
    assert EVALUATORS["utility"](ctx)["utility"] == 1.0
    _, predicted = net.embed(to_unit_range(train_set.images))
    assert EVALUATORS["label_consistency"](ctx)["label_consistency"] == (predicted == train_set.labels).mean()


def test_metrics_use_whole_training_sized_chunks_so_rejection_draws_no_more(split, net, tmp_path):
    n = len(split.train.labels)
    rows = np.random.default_rng(0).integers(0, n, 2 * n + n // 2)
    fake = ImageSet(split.train.images[rows], split.train.labels[rows])
    ctx = context(split, net, fake, tmp_path)
    assert ctx.compared == 2 * n
    # What the rejection evaluator leaves undrawn, beyond ctx.compared, is what these never look at. The same
    # feature values on both sides: embedded in other batch sizes they could differ in the last bits.
    fewer = context(split, net, ImageSet(fake.images[:2 * n], fake.labels[:2 * n]), tmp_path)
    fewer.__dict__.update(fake_features=tuple(part[:2 * n] for part in ctx.fake_features),
                          held_out_features=ctx.held_out_features, train_features=ctx.train_features)
    for name in ("frechet", "prdc"):
        assert EVALUATORS[name](ctx) == EVALUATORS[name](fewer)


def test_held_out_images_as_generated(split, net, tmp_path):
    test_set = split.test
    ctx = context(split, net, test_set, tmp_path)
    assert EVALUATORS["frechet"](ctx)["fd"] == pytest.approx(0.0, abs=1e-9)
    assert EVALUATORS["prdc"](ctx) == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    scores = EVALUATORS["memorisation"](ctx)
    assert scores["memorisation"] == scores["memorisation_real"] < 0.05
    consistency = EVALUATORS["label_consistency"](ctx)
    assert consistency["label_consistency"] == consistency["evaluator_accuracy"]


def test_stray_ink_reads_generated_images_as_their_pngs(split, net, tmp_path):
    images = split.test.images.copy()
    assert EVALUATORS["stray_ink"](context(split, net, split.test, tmp_path))["stray_ink"] == 0.0
    images[::2, :, 0, 0] = 255  # the digits' top-left pixel, blank in every real one, inked by half
    inked = EVALUATORS["stray_ink"](context(split, net, ImageSet(images, split.test.labels), tmp_path))
    assert inked["stray_ink"] == pytest.approx(0.5, abs=0.01) and inked["stray_ink_real"] == 0.0


def test_wrong_labels_and_blank_images_score_badly(split, net, tmp_path):
    test_set = split.test
    relabelled = ImageSet(test_set.images, (test_set.labels + 1) % 10)
    ctx = context(split, net, relabelled, tmp_path)
    assert EVALUATORS["label_consistency"](ctx)["label_consistency"] < 0.3
    assert EVALUATORS["utility"](ctx)["utility"] < 0.3
    blank = context(split, net, ImageSet(np.zeros_like(test_set.images), test_set.labels), tmp_path)
    frechet = EVALUATORS["frechet"](blank)
    assert frechet["fd_ratio"] > 10 and frechet["fd_ratio_sd"] > 0
    assert EVALUATORS["prdc"](blank)["precision"] == 0.0


def test_kid_cas_and_near_twins_on_real_images_as_generated(split, net, tmp_path):
    as_train = context(split, net, split.train, tmp_path)
    kid = EVALUATORS["kid"](as_train)
    assert kid["kid"] == kid["kid_floor"] and kid["kid_low"] <= kid["kid"] <= kid["kid_high"]
    cas = EVALUATORS["cas"](as_train)  # the same rows train both classifiers
    assert cas["cas"] == 1.0 and cas["cas_acc_synthetic"] == cas["cas_acc_real"] > 0.5
    twins = EVALUATORS["near_twins"](context(split, net, split.test, tmp_path))  # the test split against itself
    assert twins["near_twins"] == twins["near_twins_real"] and twins["near_twins_ratio"] == 1.0
    assert sorted(twins["near_twins_by_class"], key=int) == [str(k) for k in range(10)]
    against_train = EVALUATORS["near_twins"](as_train)  # the training split against itself
    assert against_train["near_twins_train"] == against_train["near_twins_train_real"]
    assert against_train["near_twins_train_ratio"] == 1.0
    # More real rows per class than the test split: the real rate's interval is narrower.
    assert (against_train["near_twins_train_real_high"] - against_train["near_twins_train_real_low"]
            < twins["near_twins_real_high"] - twins["near_twins_real_low"])


def test_kid_cas_and_near_twins_see_bad_samples(split, net, tmp_path):
    test_set = split.test
    relabelled = context(split, net, ImageSet(test_set.images, (test_set.labels + 1) % 10), tmp_path)
    assert EVALUATORS["cas"](relabelled)["cas"] < 0.3
    blank = context(split, net, ImageSet(np.zeros_like(test_set.images), test_set.labels), tmp_path)
    kid = EVALUATORS["kid"](blank)
    assert kid["kid_low"] > 10 * max(kid["kid_floor"], 1e-3)
    twins = EVALUATORS["near_twins"](blank)  # every blank image is its class's twin
    assert twins["near_twins"] == 1.0 and twins["near_twins_ratio"] > 5
    assert twins["near_twins_train"] == 1.0 and twins["near_twins_train_ratio"] > 5


def test_evaluator_network_is_cached_by_data_hash(split, tmp_path):
    train_set = split.train
    cfg = tiny_params().features
    first = load_or_train_feature_net(train_set, cfg, tmp_path)
    entry = tmp_path / cache_key(train_set, cfg)[:16]
    assert ckpt.read_meta(entry)["trained"] is True
    stamp = (entry / "features.safetensors").stat().st_mtime_ns
    again = load_or_train_feature_net(train_set, cfg, tmp_path)
    assert (entry / "features.safetensors").stat().st_mtime_ns == stamp  # loaded, not retrained
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert a.equal(b)
    # Trained from a fixed seed: retraining without the cache gives the same weights.
    fresh = load_or_train_feature_net(train_set, cfg, None)
    assert all(a.equal(b) for a, b in zip(first.state_dict().values(), fresh.state_dict().values()))
    other = ImageSet(train_set.images[:-1], train_set.labels[:-1])
    assert cache_key(other, cfg) != cache_key(train_set, cfg)


def test_the_real_utility_baseline_is_fitted_once_per_dataset(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6))
    y = (x[:, 0] + 0.5 * rng.normal(size=160) > 0).astype(np.int64)
    fit, fits = m.classifier_accuracy, []
    monkeypatch.setattr(m, "classifier_accuracy", lambda *args: fits.append(args) or fit(*args))
    accuracy = cached_accuracy(tmp_path)
    first = accuracy(x[:100], y[:100], x[100:], y[100:])
    assert accuracy(x[:100], y[:100], x[100:], y[100:]) == first  # the stored value, exactly
    assert first == pytest.approx(fit(x[:100], y[:100], x[100:], y[100:]), abs=1 / 60)  # a refit: one row at most
    assert len(fits) == 1  # the second call read the cache
    flipped = accuracy(x[:100], 1 - y[:100], x[100:], y[100:])  # other inputs: another entry
    assert len(fits) == 2 and flipped < 0.5 < first
    for entry in tmp_path.glob("accuracy-*.json"):
        entry.write_text("{not json")  # a damaged entry is fitted again, not trusted
    assert accuracy(x[:100], y[:100], x[100:], y[100:]) == first and len(fits) == 3


def test_evaluate_writes_every_chosen_metric_and_plot(prepared, tmp_path):
    params = tiny_params(train__epochs=1)
    train(params, prepared, tmp_path / "model", progress=False)
    metrics = evaluate(load_model(tmp_path / "model"), prepared, params, tmp_path / "eval.json", tmp_path / "plots",
                       tmp_path / "cache")
    assert json.loads((tmp_path / "eval.json").read_text()) == metrics
    for key in ("d_auc", "fd", "fd_floor", "precision", "recall", "density", "coverage", "label_consistency",
                "utility", "memorisation", "drs_fd", "drs_acceptance"):
        assert np.isfinite(metrics[key]), key
    assert 0.25 < metrics["drs_acceptance"] < 0.75  # generate.rejection.target_acceptance is 0.5
    assert sorted(p.name for p in (tmp_path / "plots" / "classes").iterdir()) == [f"{k}.png" for k in range(10)]
    pixel, label = (pd.read_csv(tmp_path / "plots" / "marginals" / name) for name in ("00-pixel.csv", "01-label.csv"))
    assert len(pixel) == 16 and pixel[["real", "generated"]].sum().round(3).tolist() == [1, 1]
    # The digits' dark background: the first intensity bin holds the most real pixels.
    assert pixel["real"].idxmax() == 0 and pixel["value"][0] == "0-15"
    test_labels = load_prepared(prepared).test.labels
    assert np.allclose(label["real"], np.bincount(test_labels, minlength=10) / len(test_labels), atol=1e-5)
    assert label["value"].astype(str).tolist() == [str(k) for k in range(10)]
    with pytest.raises(ValueError, match="unknown \\['fid'\\]"):
        evaluate(load_model(tmp_path / "model"), prepared, tiny_params(evaluate__evaluators=["fid"]),
                 tmp_path / "e.json", tmp_path / "plots")


def test_features_do_not_touch_the_global_random_stream(split):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_or_train_feature_net(split.train, tiny_params().features, None)
    assert torch.rand(3).equal(expected)


def test_corrupt_cache_entry_is_rebuilt_and_a_second_writer_keeps_the_first(split, tmp_path):
    train_set = split.train
    cfg = tiny_params().features
    first = load_or_train_feature_net(train_set, cfg, tmp_path)
    entry = tmp_path / cache_key(train_set, cfg)[:16]
    weights = entry / "features.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated
    rebuilt = load_or_train_feature_net(train_set, cfg, tmp_path)
    assert all(a.equal(b) for a, b in zip(first.state_dict().values(), rebuilt.state_dict().values()))
    assert ckpt.load_tensors(entry, "features").keys() == first.state_dict().keys()  # sha256 matches again
    # A process that finishes training second (another DDP rank) leaves the entry as it is.
    meta = ckpt.read_meta(entry)
    assert ckpt.save_if_absent(entry, {"features": first.state_dict()}, {"format": "other"}) is False
    assert ckpt.read_meta(entry) == meta
    left = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")  # the (empty) lock file stays
    assert left == [entry.name]  # no private copies left behind


TRAIN_ALONGSIDE = """
import os, sys, time
from pathlib import Path
from gan_core.images import features
from gan_core.images.data import load_prepared
from tests.helpers import tiny_params

prepared, cache, seen = map(Path, sys.argv[1:])
train = features.train_feature_net

def train_slowly(*args):
    (seen / f"trained-{os.getpid()}").touch()
    time.sleep(2)  # the other process asks for the same evaluator meanwhile
    return train(*args)

features.train_feature_net = train_slowly
(seen / f"arrived-{os.getpid()}").touch()
while len(list(seen.glob("arrived-*"))) < 2:  # both ask at the same moment
    time.sleep(0.01)
features.load_or_train_feature_net(load_prepared(prepared).train, tiny_params().features, cache)
"""


def test_processes_started_together_train_the_evaluator_once(prepared, split, tmp_path):
    cache, seen = tmp_path / "cache", tmp_path / "seen"
    seen.mkdir()
    command = [sys.executable, "-c", TRAIN_ALONGSIDE, str(prepared), str(cache), str(seen)]
    processes = [subprocess.Popen(command, cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    assert len(list(seen.glob("trained-*"))) == 1  # the other waited and loaded its copy
    entry = cache / cache_key(split.train, tiny_params().features)[:16]
    assert ckpt.read_meta(entry)["trained"] is True
    assert sorted(p.name for p in cache.glob("[!.]*")) == [entry.name]


def test_evaluation_refuses_data_the_model_was_not_trained_on(tmp_path):
    layout = Layout(tmp_path)
    params = tiny_params(train__epochs=1, train__select_every=0)
    run_prepare(params, layout)
    run_train(params, layout, progress=False)
    reshuffled = tiny_params(train__epochs=1, train__select_every=0, prepare__seed=1)
    run_prepare(reshuffled, layout)  # same file, other split: some test images were this model's training images
    with pytest.raises(LineageError, match=r"digits\.npz is not the data the model \(step 39\) was trained on "
                                           r"\(splits train, validation, test differ.*prepare\.seed"):
        run_evaluate(reshuffled, layout)
    assert not layout.metrics.exists()
    run_prepare(params, layout)  # the split it was trained on again: evaluation runs
    on_test = run_evaluate(params, layout)
    assert np.isfinite(on_test["fd"])
    # evaluate.split: validation compares the same samples with the validation images (choosing settings)
    validation = tiny_params(train__epochs=1, train__select_every=0, evaluate__split="validation")
    on_validation = run_evaluate(validation, layout)
    assert on_validation["fd_floor"] != on_test["fd_floor"] and on_validation["d_score_fake"] == on_test["d_score_fake"]


def test_no_training_image_is_in_validation_or_test(split, tmp_path):
    hashes = {name: set(image_hashes(part.images)) for name, part in split.splits().items()}
    assert sum(map(len, hashes.values())) == 1797  # every image once, in one split
    assert not hashes["train"] & hashes["validation"] and not hashes["train"] & hashes["test"]
    leaked = PreparedData(split.train, split.validation,
                          ImageSet(np.r_[split.test.images, split.train.images[:3]],
                                   np.r_[split.test.labels, split.train.labels[:3]]), split.class_names)
    with pytest.raises(DataError, match="x.npz: 3 images of the training split are also in the test split"):
        check_disjoint(leaked, "x.npz")


def test_evaluator_cache_key_follows_its_code(split, tmp_path, monkeypatch):
    cfg = tiny_params().features
    before = cache_key(split.train, cfg)
    copy = tmp_path / "gan_core"
    shutil.copytree(fingerprint.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE", copy)
    assert cache_key(split.train, cfg) == before  # the same code, the same key
    for unrelated in ("images/train.py", "checkpoint.py", "layout.py"):  # not, or not for the weights, used by features.py
        (copy / unrelated).write_text((copy / unrelated).read_text() + "\n# a change elsewhere\n")
    assert cache_key(split.train, cfg) == before
    augment = copy / "images/augment.py"

    def edit(old: str, new: str) -> None:
        assert old in augment.read_text()
        augment.write_text(augment.read_text().replace(old, new))

    edit("def cutout(", "def cutout(  # not called by features.py\n    ")
    assert cache_key(split.train, cfg) == before
    edit("limit = max(1,", "limit = max(2,")  # in translate, which it calls
    assert cache_key(split.train, cfg) != before


def test_unlabelled_data_is_flagged_and_measured_by_a_trained_evaluator(tmp_path):
    from gan_core.layout import Layout
    from gan_core.stages.evaluate import run_evaluate
    from gan_core.stages.prepare import run_prepare
    from gan_core.stages.train import run_train
    from tests.helpers import write_digit_images

    layout = Layout(tmp_path)
    write_digit_images(layout.raw / "flat", per_class=15, rgb=False, by_class=False, size=8)
    params = tiny_params(prepare__source=str(layout.raw / "flat"), prepare__dataset="flat", train__epochs=1,
                         features__epochs=40)
    run_prepare(params, layout)
    run_train(params, layout, progress=False)
    metrics = run_evaluate(params, layout)
    assert json.loads(layout.metrics.read_text()) == metrics
    assert metrics["labelled"] is False and metrics["feature_space"] == "cnn-rotation (self-supervised)"
    assert metrics["skipped_evaluators"] == "label_consistency, utility, cas" and np.isfinite(metrics["fd"])
    # Every plot folder dvc.yaml declares holds a file (git keeps no empty folder for a second clone).
    assert [p.name for p in (layout.plots / "classes").iterdir()] == ["all.png"]
    assert [p.name for p in (layout.plots / "marginals").iterdir()] == ["00-pixel.csv"]
    # The evaluator learnt its self-supervised task (four turns: chance is 0.25), not random weights.
    [entry] = layout.feature_cache.glob("[!.]*")  # beside its lock file
    meta = ckpt.read_meta(entry)
    assert meta["trained"] is True and meta["feature_space"] == metrics["feature_space"]
    assert meta["train_accuracy"] > 0.5


def test_labelled_data_is_flagged_with_its_class_evaluator(split, tmp_path):
    train_set = split.train
    cfg = tiny_params().features
    load_or_train_feature_net(train_set, cfg, tmp_path)
    meta = ckpt.read_meta(tmp_path / cache_key(train_set, cfg)[:16])
    assert meta["feature_space"] == "cnn-classes" and meta["train_accuracy"] > 0.2  # ten classes: chance is 0.1
