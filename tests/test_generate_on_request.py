"""Generation on request: exact per-class counts, the truncation trick, the Python API and the CLI flags."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from gan_core import cli
from gan_core.config import ConfigError
from gan_core.images.generate import generate_dataset
from gan_core.images.sampling import generate_and_score, load_model, sample_images
from gan_core.publication.read import download_dataset, read_manifest
from gan_core.shards import shard_quotas
from tests.helpers import bound_metrics, tiny_params

COUNTS = {3: 50, 7: 20}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


def with_counts(counts: dict, **overrides):
    """Tiny params asking for `counts` (TINY sets num_samples, which must then be their sum)."""
    return tiny_params(generate__class_counts=counts, generate__num_samples=sum(counts.values()), **overrides)


def project(root: Path, model_dir: Path, **overrides) -> Path:
    """A project folder: params.yaml (tiny, with overrides) and models/<dataset>/ as training exports it."""
    params = tiny_params(**overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    shutil.copytree(model_dir, root / "models" / params.prepare.dataset)
    (root / "metrics").mkdir()  # its evaluation: a dataset is published only from a model that passed the gate
    (root / "metrics" / "eval.json").write_text(json.dumps(bound_metrics(model_dir)))
    return root


def published_labels(bucket: str, name: str, version: str, to: Path) -> Counter:
    folder = download_dataset(bucket, name, version, to)  # every shard's sha256 checked
    return Counter(pq.read_table(folder).column("label").to_pylist())


def test_shard_quotas_spread_each_class_and_add_up():
    quotas = shard_quotas(70, 30, COUNTS)
    assert [sum(rows for _, rows in q) for q in quotas] == [30, 30, 10]
    totals = Counter()
    for quota in quotas:
        totals.update(dict(quota))
        assert {k for k, _ in quota} == {3, 7}  # every shard holds its share of both classes
    assert totals == COUNTS
    assert shard_quotas(70, 30, None) == [[(None, 30)], [(None, 30)], [(None, 10)]]


@pytest.mark.parametrize("rejection", [False, True])
def test_cli_publishes_exactly_the_requested_counts(rejection, tiny_model_dir, s3_env, tmp_path, monkeypatch):
    name = f"on-request-cli-{rejection}".lower()
    root = project(tmp_path, tiny_model_dir, generate__name=name, generate__shard_size=30,
                   generate__rejection={"enabled": rejection, "target_acceptance": 0.5, "burn_in": 200})
    monkeypatch.chdir(root)
    assert cli.main(["generate", "--class-counts", "3=50,7=20", "--version", "v1", "--bucket", s3_env.bucket,
                     "--truncation", "0.8"]) == 0
    manifest = read_manifest(s3_env.bucket, name, "v1")
    assert manifest["class_counts"] == {"3": 50, "7": 20} and manifest["truncation"] == 0.8
    assert manifest["sample_count"] == 70 and len(manifest["shards"]) == 3
    assert manifest["rejection"]["enabled"] is rejection
    if rejection:
        assert manifest["acceptance_rate"] < 0.8  # candidates were really rejected, yet the counts are exact
    assert published_labels(s3_env.bucket, name, "v1", tmp_path / "down") == COUNTS


def test_flow_parameters_reach_the_manifest(tiny_model_dir, s3_env, tmp_path, monkeypatch, prefect_api_url):
    from flows.generate import generate_flow

    root = project(tmp_path, tiny_model_dir, generate__name="on-request-flow", generate__shard_size=30,
                   generate__rejection={"enabled": True, "target_acceptance": 0.5, "burn_in": 200})
    monkeypatch.chdir(root)
    uri = generate_flow(version="v1", bucket=s3_env.bucket, class_counts={"3": 50, "7": 20}, truncation=0.7)
    assert uri.endswith("/on-request-flow/v1/")
    manifest = read_manifest(s3_env.bucket, "on-request-flow", "v1")
    assert manifest["class_counts"] == {"3": 50, "7": 20} and manifest["truncation"] == 0.7
    assert manifest["params"]["generate"]["num_samples"] == 70
    assert published_labels(s3_env.bucket, "on-request-flow", "v1", tmp_path / "down") == COUNTS


def test_truncation_one_is_the_plain_generator(model, tmp_path):
    generate_dataset(model, tiny_params().generate, tmp_path / "plain")
    generate_dataset(model, tiny_params(generate__truncation=1.0).generate, tmp_path / "one")
    for shard in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet"):
        assert (tmp_path / "plain" / shard).read_bytes() == (tmp_path / "one" / shard).read_bytes()


def per_class_variance(samples) -> float:
    return float(np.mean([samples.images[samples.labels == k].astype(float).var(axis=0).mean()
                          for k in np.unique(samples.labels)]))


def test_truncation_pulls_each_class_towards_its_centre(model):
    counts = {2: 30, 5: 30}
    collapsed = sample_images(model, class_counts=counts, truncation=0.0)
    for k in counts:
        images = collapsed.images[collapsed.labels == k]
        assert len(images) == 30 and (images == images[0]).all()  # psi = 0: every sample is the class's w_avg
    assert not np.array_equal(collapsed.images[collapsed.labels == 2][0], collapsed.images[collapsed.labels == 5][0])
    plain = sample_images(model, class_counts=counts)
    half = sample_images(model, class_counts=counts, truncation=0.5)
    assert np.array_equal(plain.seeds, half.seeds)  # the same latents, only moved
    assert per_class_variance(half) < 0.8 * per_class_variance(plain)


def test_a_row_regenerates_from_its_seed_with_truncation(model, tmp_path):
    cfg = with_counts(COUNTS, generate__truncation=0.6).generate
    summary = generate_dataset(model, cfg, tmp_path)
    assert summary["class_counts"] == {"3": 50, "7": 20} and summary["truncation"] == 0.6
    rows = pq.read_table(tmp_path).to_pylist()
    row = rows[41]
    again = generate_and_score(model, np.array([row["seed"]]), truncation=0.6)
    png = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
    expected = ((again.images[0, 0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(png, expected) and row["label"] == again.labels[0]
    plain = generate_and_score(model, np.array([row["seed"]]))
    assert not np.array_equal(plain.images.numpy(), again.images.numpy())


def test_python_api_samples_the_rows_of_a_one_shard_dataset(model, tiny_model_dir, tmp_path):
    samples = sample_images(tiny_model_dir, class_counts={"3": 4, 7: 2}, truncation=0.7)  # a folder works too
    assert samples.images.dtype == np.uint8 and samples.images.shape == (6, 1, 8, 8)
    assert samples.labels.tolist() == [3, 3, 3, 3, 7, 7] and ((samples.d_scores > 0) & (samples.d_scores < 1)).all()
    generate_dataset(model, with_counts({3: 4, 7: 2}, generate__truncation=0.7).generate, tmp_path)
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.column("seed").to_pylist() == samples.seeds.tolist()
    first = np.asarray(Image.open(io.BytesIO(table.column("image")[0].as_py()["bytes"])))
    assert np.array_equal(first, samples.images[0, 0])
    balanced = sample_images(model, num_samples=20)
    assert Counter(balanced.labels.tolist()) == {k: 2 for k in range(10)}


@pytest.mark.parametrize("generate, model, message", [
    ({"class_counts": {3: 5}}, {"conditional": False},
     "generate.class_counts needs a class-conditional model (model.conditional is false)"),
    ({"truncation": 0}, {}, "generate.truncation: input should be greater than 0 (got 0)"),
    ({"truncation": 1.5}, {}, "generate.truncation: input should be less than or equal to 1 (got 1.5)"),
    ({"class_counts": {3: 5}, "num_samples": 9}, {}, "generate.num_samples is 9 but generate.class_counts add up to 5"),
    ({"class_counts": {}}, {}, "generate.class_counts: give at least one class"),
    ({"class_counts": {3: 0}}, {}, "generate.class_counts.3: input should be greater than or equal to 1 (got 0)"),
])
def test_config_errors_name_the_key(generate, model, message):
    from gan_core.config import parse_params

    with pytest.raises(ConfigError) as error:
        parse_params({"generate": generate, "model": model})
    assert message in str(error.value)


def test_unknown_class_and_unconditional_model_are_refused(model, tiny_model_dir, tmp_path):
    cfg = with_counts({3: 5, 12: 5}).generate
    with pytest.raises(ConfigError, match=r"generate.class_counts: unknown class 12; the model's classes are 0-9"):
        generate_dataset(model, cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown class 'cats'; the model's classes are 0-9"):
        sample_images(model, class_counts={"cats": 5})
    named = load_model(tiny_model_dir)
    named.meta["class_names"] = [f"digit-{k}" for k in range(10)]
    assert sample_images(named, class_counts={"digit-7": 3, 2: 1}).labels.tolist() == [2, 7, 7, 7]
    with pytest.raises(ConfigError, match=r"unknown class 'seven'; the model's classes are 0 \('digit-0'\), "):
        sample_images(named, class_counts={"seven": 1})
    unconditional = load_model(tiny_model_dir)
    unconditional.shape = type(unconditional.shape)(8, 1, 0)
    with pytest.raises(ConfigError, match="generate.class_counts: the model is unconditional"):
        generate_dataset(unconditional, with_counts({3: 5}).generate, tmp_path)


def test_cli_flags_reach_the_params(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"generate": {"num_samples": 10000}}))
    monkeypatch.chdir(tmp_path)
    parse = cli.build_parser().parse_args
    params = cli.generate_params(parse(["generate", "--class-counts", "3=5000,7=1000", "--truncation", "0.7"]))
    assert params.generate.class_counts == {3: 5000, 7: 1000} and params.generate.num_samples == 6000
    assert params.generate.truncation == 0.7
    assert cli.generate_params(parse(["generate", "--num-samples", "12"])).generate.num_samples == 12


@pytest.mark.parametrize("flags, message", [
    (["--class-counts", "3:5"], "--class-counts: expected CLASS=COUNT,... with each class once and whole counts"),
    (["--class-counts", "3=5,3=2"], "--class-counts: expected CLASS=COUNT"),
    (["--num-samples", "many"], "--num-samples: expected an integer (got 'many')"),
    (["--truncation", "1.5"], "--truncation: generate.truncation: input should be less than or equal to 1"),
    (["--truncation", "off"], "--truncation: expected a number (got 'off')"),
    (["--num-samples", "9", "--class-counts", "3=5"], "--num-samples/--class-counts: generate.num_samples is 9"),
])
def test_cli_flag_errors_are_one_line_naming_the_flag(flags, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("generate:\n  num_samples: 100\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "--no-publish", *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ganforge generate: error: ") and message in err
