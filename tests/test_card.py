"""The dataset card: published with every version, listed and verified, readable by pandas, HF and a browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gan_core import storage
from gan_core.card import metrics_table
from gan_core.cli import main
from gan_core.images.card import CARD_FILES, CELL, nearest_training
from gan_core.images.data import load_prepared, prepare_dataset
from gan_core.layout import Layout
from gan_core.stages.evaluate import run_evaluate
from gan_core.stages.generate import run_generate, run_publish
from gan_core.stages.train import run_train
from tests.helpers import prepared_digits, tiny_params

CHROMIUM = Path("/usr/bin/chromium")
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder after prepare (digits with class names), train, evaluate (tiny) and generate."""
    root = tmp_path_factory.mktemp("card-project")
    layout = Layout(root)
    params = tiny_params(generate__name="card-digits", generate__license="cc-by-4.0")
    prepare_dataset("bundled:digits", layout.prepared(params), 0.15, 0.15, 0, class_names=NAMES)
    run_train(params, layout, progress=False)
    assert json.loads((layout.model(params) / "meta.json").read_text())["class_names"] == NAMES
    run_evaluate(params, layout)
    summary = run_generate(params, layout.generated(params), layout)
    return layout, params, summary


@pytest.fixture
def published(project, s3_env, request):
    layout, params, summary = project
    version = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60]
    uri = run_publish(params, summary, version, s3_env.bucket, layout)
    return storage.read_manifest(s3_env.bucket, params.generate.name, version), uri


def test_card_is_listed_in_the_manifest_and_downloads_verified(project, published, s3_env, tmp_path):
    layout, params, _ = project
    manifest, uri = published
    local = layout.generated(params) / "_card"
    folder = f"datasets/card-digits/{manifest['version']}"
    assert [e["key"] for e in manifest["files"]] == [f"{folder}/_card/{name}" for name in CARD_FILES]
    for entry, name in zip(manifest["files"], CARD_FILES):
        assert (entry["sha256"], entry["bytes"]) == storage.file_digest(local / name)
    got = storage.download_dataset(s3_env.bucket, "card-digits", manifest["version"], tmp_path / "to")
    assert sorted(p.name for p in (got / "_card").iterdir()) == sorted(CARD_FILES)
    assert (got / "_card" / "report.html").read_bytes() == (local / "report.html").read_bytes()
    # The card beside the shards leaves the folder a Parquet dataset, on S3 and downloaded.
    frame = pd.read_parquet(uri, storage_options={"client_kwargs": {"endpoint_url": s3_env.endpoint}})
    assert len(frame) == manifest["sample_count"] == 120
    assert list(frame.columns) == ["image", "label", "seed", "d_score"]
    assert len(pd.read_parquet(got)) == 120


def test_the_cards_loading_code_runs_as_written(project, published, s3_env, tmp_path, monkeypatch):
    layout, params, _ = project
    manifest, _ = published
    storage.download_dataset(s3_env.bucket, "card-digits", manifest["version"], tmp_path / "downloads")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    readme = (layout.generated(params) / "_card" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(code, scope)
    assert len(scope["frame"]) == len(scope["ds"]) == 120
    assert scope["ds"].features["label"].names == NAMES and scope["ds"][0]["image"].size == (8, 8)


def test_show_fetches_the_card_and_refuses_a_changed_file(published, s3_env, tmp_path, capsys):
    manifest, _ = published
    assert main(["show", "card-digits", "--version", manifest["version"], "--to", str(tmp_path / "cards")]) == 0
    shown = json.loads(capsys.readouterr().out)
    card = tmp_path / "cards" / "card-digits" / manifest["version"] / "_card"
    assert shown["README.md"] == str(card / "README.md") and shown["open"] == (card / "report.html").as_uri()
    assert Image.open(shown["preview.png"]).size[0] > 0
    assert sorted(p.name for p in card.parent.iterdir()) == ["_card", "_manifest.json"]  # the card, no shards
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=manifest["files"][2]["key"], Body=b"<html>changed</html>")
    assert main(["show", "card-digits", "--version", manifest["version"], "--to", str(tmp_path / "again")]) == 1
    assert "does not match its manifest" in capsys.readouterr().err
    assert not (tmp_path / "again" / "card-digits").exists()


def test_a_missing_card_file_stops_publishing_before_anything_is_written(project, s3_env, tmp_path):
    layout, params, summary = project
    shards = [Path(p) for p in summary["shard_files"]]
    with pytest.raises(storage.StorageError, match="cannot publish missing files"):
        storage.publish_dataset(shards, bucket=s3_env.bucket, name="card-missing", version="v1", manifest={},
                                extra_files=[tmp_path / "README.md"])
    assert s3_env.client.list_objects_v2(Bucket=s3_env.bucket, Prefix="datasets/card-missing/")["KeyCount"] == 0


def test_metrics_sit_next_to_their_goals_and_the_real_real_floor():
    rows = metrics_table({"fd": 3.74, "fd_floor": 2.79, "fd_ratio": 1.34, "memorisation": 0.0016,
                          "d_score_real": {"mean": 0.5}, "utility": 0.5})
    assert rows[2:] == ["| d_score_real.mean | 0.5 |  |", "| fd | 3.74 | real-real floor 2.79 |",
                        "| fd_floor | 2.79 |  |", "| fd_ratio | 1.34 | <= 1.5: met |", "| memorisation | 0.0016 | < 0.01: met |",
                        "| utility | 0.5 | >= 0.97: missed |"]


def test_readme_header_has_license_size_features_and_class_names(project, published):
    from huggingface_hub import DatasetCard

    layout, params, _ = project
    card = DatasetCard.load(layout.generated(params) / "_card" / "README.md")
    header = card.data.to_dict()
    assert header["license"] == "cc-by-4.0" and header["size_categories"] == ["n<1K"]
    features = {f["name"]: f["dtype"] for f in header["dataset_info"]["features"]}
    assert features["image"] == "image" and features["seed"] == "int64"
    assert features["label"]["class_label"]["names"] == {str(i): name for i, name in enumerate(NAMES)}
    assert "rejection sampling: off; acceptance rate 1.000" in card.text
    assert f"pd.read_parquet('{published[1]}')" in card.text
    metrics = json.loads(layout.metrics.read_text())  # this model's evaluation, beside the README's goals
    assert f"| fd | {metrics['fd']:.4g} | real-real floor {metrics['fd_floor']:.4g} |" in card.text
    met = "met" if metrics["utility"] >= 0.97 else "missed"
    assert f"| utility | {metrics['utility']:.4g} | >= 0.97: {met} |" in card.text


def test_preview_has_one_row_per_class(project, published):
    layout, params, _ = project
    preview = Image.open(layout.generated(params) / "_card" / "preview.png")
    side, gap = 8 * (CELL // 8), 2  # 8x8 digits upscaled to CELL
    assert preview.height == 10 * (side + gap) + gap
    assert len(preview.convert("L").getcolors()) > 10  # images, not an empty canvas


def test_nearest_training_image_of_a_training_image_is_itself(tmp_path):
    train = load_prepared(prepared_digits(tmp_path)).train
    picks = [train.images[5, 0], np.zeros((8, 8), np.uint8)]
    (same, d_same), (_, d_blank) = nearest_training(picks, train)
    assert d_same == 0.0 and np.array_equal(same, train.images[5, 0]) and d_blank > 0


def test_report_is_self_contained(project, published):
    layout, params, _ = project
    page = (layout.generated(params) / "_card" / "report.html").read_text()
    sources = re.findall(r"""src=['"]([^'"]*)""", page)
    assert len(sources) == 10 * 2 + 6 * 2  # real and generated per class; 6 generated beside their neighbours
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<link|url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    assert page.count("<svg") == 3  # score histogram, losses, selection curve


def _chromium(*args: str, timeout: int = 120) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def browser_required(env) -> bool:
    """CI (CI=true) and `make test` (GANFORGE_REQUIRE_BROWSER=1, after installing chromium) test the report in
    a browser: there a missing one is a failure, not a skip."""
    return any(env.get(name, "").lower() in ("1", "true", "yes") for name in ("CI", "GANFORGE_REQUIRE_BROWSER"))


def browser_or_skip(path: Path, env) -> Path:
    if path.exists():
        return path
    message = f"no browser: {path} is missing (apt-get install chromium; `make test` installs it)"
    if browser_required(env):
        pytest.fail(f"{message}; CI and `make test` require it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """First in the test's arguments, so that a missing browser stops it before the project is trained."""
    return browser_or_skip(CHROMIUM, os.environ)


def test_a_missing_browser_fails_where_one_is_required(tmp_path):
    missing = tmp_path / "no-chromium"
    with pytest.raises(pytest.fail.Exception, match="no browser: .*no-chromium is missing.*require it"):
        browser_or_skip(missing, {"CI": "true"})
    with pytest.raises(pytest.fail.Exception):
        browser_or_skip(missing, {"GANFORGE_REQUIRE_BROWSER": "1"})
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser_or_skip(missing, {"CI": "false"})
    assert browser_or_skip(tmp_path, {"CI": "true"}) == tmp_path


def test_report_opens_in_a_real_browser_with_every_image_loaded(chromium, project, published, tmp_path):
    layout, params, _ = project
    report = tmp_path / "report.html"  # outside the project folder, as a user who fetched it would open it
    shutil.copy(layout.generated(params) / "_card" / "report.html", report)
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", report.as_uri())
    tags = re.findall(r"<img\b", report.read_text())
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert loaded, "the page's load handler never ran"
    assert int(loaded.group(1)) == len(tags) == 32
    _chromium("--window-size=1100,3400", f"--screenshot={tmp_path / 'page.png'}", report.as_uri())
    shot = Image.open(tmp_path / "page.png").convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20)
    assert shot.size == (1100, 3400) and len(colours) > 50  # text, greys of digits, coloured curves
