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

from gan_core import registry
from gan_core.cli import main
from gan_core.config import parse_params
from gan_core.images.card import CARD_FILES, CELL, nearest_training
from gan_core.images.data import load_prepared, prepare_dataset
from gan_core.layout import Layout
from gan_core.publication.publish import publish_dataset
from gan_core.publication.read import download_dataset, read_manifest
from gan_core.publication.s3 import StorageError, file_digest
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
    return read_manifest(s3_env.bucket, params.generate.name, version), uri


def test_card_is_listed_in_the_manifest_and_downloads_verified(project, published, s3_env, tmp_path):
    layout, params, _ = project
    manifest, uri = published
    local = layout.generated(params) / "_card"
    folder = f"datasets/card-digits/{manifest['version']}"
    assert [e["key"] for e in manifest["files"]] == [f"{folder}/_card/{name}" for name in CARD_FILES]
    for entry, name in zip(manifest["files"], CARD_FILES):
        assert (entry["sha256"], entry["bytes"]) == file_digest(local / name)
    got = download_dataset(s3_env.bucket, "card-digits", manifest["version"], tmp_path / "to")
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
    download_dataset(s3_env.bucket, "card-digits", manifest["version"], tmp_path / "downloads")
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
    with pytest.raises(StorageError, match="cannot publish missing files"):
        publish_dataset(shards, bucket=s3_env.bucket, name="card-missing", version="v1", manifest={},
                        extra_files=[tmp_path / "README.md"])
    assert s3_env.client.list_objects_v2(Bucket=s3_env.bucket, Prefix="datasets/card-missing/")["KeyCount"] == 0


def test_a_metric_whose_interval_spans_no_difference_says_so_instead_of_a_number():
    from gan_core.card import metric_rows

    rows = {key: (value, note) for key, value, note in metric_rows(
        {"kid": 91.5, "kid_low": -119.1, "kid_high": 459.1, "kid_floor": -212.5, "fd": 3.74, "fd_floor": 2.79,
         "near_twins_real": 0.022, "near_twins_real_low": 0.008, "near_twins_real_high": 0.048,
         "near_twins_ratio": 1.9, "near_twins_ratio_low": 0.88, "near_twins_ratio_high": 5.15,
         "d_score_real": {"mean": 0.5}})}
    # KID on the digits' 269 test images: an interval from -119 to 459 says nothing, and the row says so.
    assert rows["kid"] == ("not distinguishable from 0", "95 % interval -119 to 459 spans 0: the sample is too "
                                                         "small to measure it (estimate 91.5)")
    assert rows["near_twins_ratio"][0] == "not distinguishable from 1"  # a ratio's "no difference" is 1
    assert rows["near_twins_real"] == ("0.022", "95 % interval 0.008 to 0.048")
    assert rows["fd"] == ("3.74", "real-real floor 2.79") and rows["d_score_real.mean"] == ("0.5", "")
    assert not {"kid_low", "kid_high", "near_twins_real_low"} & set(rows)  # folded into their metric's row
    assert rows["kid_floor"] == ("-212.5", "")


def test_the_verdict_is_the_gates_own():
    from gan_core.verdict import verdict

    gate = parse_params({}).gate  # params.yaml's thresholds
    image = {"fd_ratio": 1.2, "utility": 0.95, "label_consistency": 0.97, "memorisation": 0.0}
    table = {"kind": "table", "quality": 0.8, "utility": 0.95, "dcr_ratio": 1.0}
    cases = [image, {**image, "fd_ratio": 2.0}, {**image, "fd_ratio": 2.01}, {**image, "utility": float("nan")},
             {**image, "memorisation": None}, {**image, "label_consistency": True}, table,
             {**table, "quality": 0.69}, {k: v for k, v in table.items() if k != "dcr_ratio"}]
    for metrics in cases:
        result, gated = verdict(metrics, gate), registry.check_gate(metrics, gate)
        assert result.passed == gated.passed, metrics
        assert [c.metric for c in result.missed] == [miss.split()[0] for miss in gated.misses], metrics
    assert [c.metric for c in verdict(table, gate).checks] == ["utility", "quality", "dcr_ratio"]
    assert verdict(image, gate.model_copy(update={"fd_ratio_max": None})).checks[0].status == "not checked"
    assert not verdict({}, gate).passed and verdict({}, gate).headline.startswith("not evaluated")


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
    metrics = json.loads(layout.metrics.read_text())  # this model's evaluation, in full
    assert f"| `fd` | {metrics['fd']:.4g} | real-real floor {metrics['fd_floor']:.4g} |" in card.text


def test_readme_gives_the_gates_verdict_first(project, published):
    from huggingface_hub import DatasetCard

    layout, params, _ = project
    text = DatasetCard.load(layout.generated(params) / "_card" / "README.md").text
    metrics, passed = json.loads(layout.metrics.read_text()), registry.check_gate(
        json.loads(layout.metrics.read_text()), params.gate).passed
    headings = re.findall(r"^## (.*)$", text, re.M)
    assert headings[0] == "Verdict" and text.index("## Verdict") < text.index("synthetic images generated")
    assert f"**This model {'passed' if passed else 'missed'} the quality gate" in text
    # One row per image threshold, each with params.yaml's `gate:` value (tiny: fd_ratio_max 1000), not a
    # second table of goals (the old card's ">= 0.97" for utility).
    for metric, goal, key in [("fd_ratio", "<= 1000", "fd_ratio_max"), ("utility", ">= 0", "utility_min"),
                              ("label_consistency", ">= 0", "label_consistency_min"),
                              ("memorisation", "<= 1", "memorisation_max")]:
        row = next(line for line in text.splitlines() if line.startswith(f"| ✅ | {metric} (")
                   or line.startswith(f"| ❌ | {metric} ("))
        assert f"| {shown(metrics, metric)} | {goal} (gate.{key}) |" in row
    # fd_ratio carries its spread over other test sets (the evaluate stage's fd_ratio_sd), and the card says what ± is
    assert " ± " in shown(metrics, "fd_ratio") and "± one standard deviation over other real test sets" in text
    assert ">= 0.97" not in text and "gate.quality_min" not in text  # no table threshold for images


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
    import base64
    import io

    layout, params, _ = project
    page = (layout.generated(params) / "_card" / "report.html").read_text()
    sources = re.findall(r"""src=['"]([^'"]*)""", page)
    assert len(sources) == 10 * 2 + 6 * 2  # real and generated per class; 6 generated beside their neighbours
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:  # every image decodes (no script in the page to report it)
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        image.load()
        assert image.width >= CELL and image.height >= CELL
    assert not re.search(r"<link|url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    assert "<script" not in page.lower()  # no test hook in what is published
    assert not re.search(r"<[^>]+\son\w+=", page)  # nor an inline handler
    assert page.count("<svg") == 3  # score histogram, losses, selection curve


def test_report_reads_top_down(project, published):
    """Verdict, then real beside generated, then the charts (the kept step marked), then every metric folded."""
    layout, params, _ = project
    page = (layout.generated(params) / "_card" / "report.html").read_text()
    metrics = json.loads(layout.metrics.read_text())
    passed = registry.check_gate(metrics, params.gate).passed
    order = [page.index("<section class='verdict"), page.index("Real (test split) and generated"),
             page.index("<svg"), page.index("<details>")]
    assert order == sorted(order) and page.index("<h1>") < order[0]
    banner = page[order[0]:page.index("</section>")]
    assert f"verdict {'passed' if passed else 'missed'}'" in banner
    assert re.findall(r"<b>(\w+)</b>", banner) == ["fd_ratio", "utility", "label_consistency", "memorisation"]
    assert f"<td>{shown(metrics, 'fd_ratio')}</td><td>&lt;= 1000</td>" in banner  # params' gate, escaped
    details = page[order[3]:]
    assert f"<td>fd</td><td>{metrics['fd']:.4g}</td>" in details and "<td>kid</td>" in details
    # The selection curve marks the step the model holds.
    step = json.loads((layout.model(params) / "meta.json").read_text())["step"]
    assert f">kept: step {step}, FD " in page and page.count("class='kept'") == 1


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
    page = (layout.generated(params) / "_card" / "report.html").read_text()
    # The published page has no script: this copy gets one that counts the images the browser decoded.
    report.write_text(page.replace("</body>", f"{COUNT_LOADED_IMAGES}</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", report.as_uri())
    tags = re.findall(r"<img\b", page)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert loaded, "the page's load handler never ran"
    assert int(loaded.group(1)) == len(tags) == 32
    _chromium("--window-size=1100,3400", f"--screenshot={tmp_path / 'page.png'}", report.as_uri())
    shot = Image.open(tmp_path / "page.png").convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20)
    assert shot.size == (1100, 3400) and len(colours) > 50  # text, greys of digits, coloured curves
    # Without scrolling (the first 1,200 pixels): the verdict's banner and real beside generated images.
    first = np.asarray(shot.crop((0, 0, 1100, 1200)))
    passed = registry.check_gate(json.loads(layout.metrics.read_text()), params.gate).passed
    banner = np.array((230, 244, 234) if passed else (252, 232, 230))
    assert (first == banner).all(axis=2).sum() > 20_000
    assert (first.mean(axis=2) < 40).sum() > 40_000  # the digits' grids: black backgrounds, not just text


COUNT_LOADED_IMAGES = (
    "<script>window.addEventListener('load', function () { var all = document.images, n = 0;"
    " for (var i = 0; i < all.length; i++) { if (all[i].complete && all[i].naturalWidth > 0) n++; }"
    " document.body.setAttribute('data-images-loaded', n); });</script>")


# --- what a card shows comes from its own model; text from data is escaped --------------------

def copy_shards(summary: dict, folder: Path) -> dict:
    """The generation summary with its shards copied into folder: the card is written beside the shards, and
    the module's project keeps its own."""
    shutil.copytree(Path(summary["shard_files"][0]).parent, folder, ignore=shutil.ignore_patterns("_*"))
    return {**summary, "shard_files": [str(folder / Path(p).name) for p in summary["shard_files"]]}


HOSTILE_NAMES = ["<img src=x onerror=alert(1)>", "a|b", "*bold* _it_", "`tick`", "[link](http://x)", "&amp;",
                 "# heading", "six", "seven", "eight"]


def test_class_names_are_escaped_in_the_readme_and_the_report(project, s3_env, tmp_path):
    from markdown_it import MarkdownIt

    layout, params, summary = project
    copy = Layout(tmp_path / "project")  # the project with hostile class names in its model's meta.json (not hashed)
    for path in (layout.model(params), layout.plots):
        shutil.copytree(path, copy.root / path.relative_to(layout.root))
    for path in (layout.prepared(params), layout.metrics):
        (copy.root / path.relative_to(layout.root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy.root / path.relative_to(layout.root))
    meta = json.loads((copy.model(params) / "meta.json").read_text())
    (copy.model(params) / "meta.json").write_text(json.dumps(meta | {"class_names": HOSTILE_NAMES}))
    shards = tmp_path / "shards"
    run_publish(params, copy_shards(summary, shards), "hostile-names", s3_env.bucket, copy)
    readme, report = shards / "_card" / "README.md", shards / "_card" / "report.html"
    body = readme.read_text().split("\n---\n", 1)[1]
    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    inline = [child for token in tokens if token.children for child in token.children]
    assert not [t for t in tokens + inline if t.type.startswith("html")]  # no raw HTML reaches a renderer
    sentence = next(t for t in tokens if t.type == "inline" and "synthetic images generated" in t.content)
    text = "".join(child.content for child in sentence.children if child.type == "text")
    assert ", ".join(HOSTILE_NAMES) in text  # each name reads exactly as written: no link, emphasis or code
    page = report.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page.lower()


def test_a_fetched_models_card_uses_its_own_curves_and_no_data_it_was_not_trained_on(project, s3_env, tmp_path,
                                                                                     monkeypatch):
    layout, params, summary = project
    version = "card-fetched"
    registry.run_publish_model(params, version, s3_env.bucket, json.loads(layout.metrics.read_text()), layout)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    model = registry.fetch_published_model(version, s3_env.bucket, params.prepare.dataset)
    # A checkout whose plots/ are another model's and whose prepared data is another split of the digits.
    checkout = Layout(tmp_path / "checkout")
    prepare_dataset("bundled:digits", checkout.prepared(params), 0.15, 0.15, seed=1)
    checkout.plots.mkdir(parents=True)
    (checkout.plots / "selection.csv").write_text("step,fd_validation\n1,999\n2,998\n")
    (checkout.plots / "losses.csv").write_text("step,d_loss,g_loss,d_real,d_fake\n1,9,9,0,0\n2,9,9,0,0\n")
    shards = tmp_path / "shards"
    run_publish(params, copy_shards(summary, shards), version, s3_env.bucket, checkout, model=model)
    page = (shards / "_card" / "report.html").read_text()
    own = pd.read_csv(layout.plots / "selection.csv")
    assert f"step: {own['step'].iloc[0]:g} to {own['step'].iloc[-1]:g}" in page and "step: 1 to 2" not in page
    step = json.loads((layout.model(params) / "meta.json").read_text())["step"]
    assert f">kept: step {step}, FD " in page
    # No memorisation check, discriminator histogram or "real" images from data the model never saw.
    assert "nearest training image</th>" not in page and "real test split (" not in page
    assert page.count("is not the data this model was trained on") == 2 and page.count("<img") == 10


def shown(metrics: dict, metric: str) -> str:
    """A gated metric as the verdict shows it: 4 significant digits, then ± its `_sd` where eval.json has one."""
    spread = metrics.get(f"{metric}_sd")
    return f"{metrics[metric]:.4g}" + ("" if spread is None else f" ± {spread:.2g}")


def expected_verdict_lines(metrics: dict, params) -> list[str]:
    """Each image threshold of the tiny params' gate, met or missed as registry.check_gate says, then the verdict."""
    gated = registry.check_gate(metrics, params.gate)
    lines = [f"gate: {metric} {shown(metrics, metric)} (goal {goal}, gate.{key}): "
             f"{'missed' if any(m.startswith(metric + ' ') for m in gated.misses) else 'met'}"
             for metric, goal, key in [("fd_ratio", "<= 1000", "fd_ratio_max"), ("utility", ">= 0", "utility_min"),
                                       ("label_consistency", ">= 0", "label_consistency_min"),
                                       ("memorisation", "<= 1", "memorisation_max")]]
    return lines + ["verdict: passed the quality gate: 4 of 4 thresholds met" if gated.passed else
                    f"verdict: missed the quality gate: {len(gated.misses)} of 4 thresholds missed"]


@pytest.fixture
def in_project(project, monkeypatch):
    import yaml

    layout, params, _ = project
    (layout.root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    monkeypatch.chdir(layout.root)
    return layout, params


def test_ganforge_evaluate_logs_each_threshold_then_the_verdict(in_project, capsys):
    layout, params = in_project
    assert main(["evaluate", "--params", "params.yaml"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    expected = expected_verdict_lines(json.loads(layout.metrics.read_text()), params)
    assert lines[-5:-1] == expected[:4] and lines[-1].startswith(expected[4])


def test_the_evaluate_flow_logs_each_threshold_then_the_verdict(in_project, prefect_api_url):
    import logging

    from flows.evaluate import evaluate_flow

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    # On the flow-run logger itself: the stage reconfigures logging on the way (caplog's root handler is gone).
    layout, params = in_project
    handler, logger = Lines(), logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        metrics = evaluate_flow("params.yaml")
    finally:
        logger.removeHandler(handler)
    expected = expected_verdict_lines(metrics, params)
    lines = [line for line in handler.lines if line.startswith(("gate: ", "verdict: "))]
    assert lines[:4] == expected[:4] and lines[4].startswith(expected[4]) and len(lines) == 5
