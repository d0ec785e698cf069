"""The library API (`from gan_core import TableSynthesizer, ImageSynthesizer`) with no S3, DVC or Prefect, and the
generate stage without S3 (generate.publish)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from gan_core.config import GenerateConfig, ModelConfig, Params, TrainConfig
from tests.helpers import ROOT, TINY


@pytest.fixture
def no_s3(monkeypatch):
    """No AWS variable at all: whatever touched S3 would fail."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)


def small_table(rows: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    city = rng.choice(["north", "south", "east"], rows, p=[0.5, 0.3, 0.2])
    return pd.DataFrame({
        "age": rng.integers(18, 80, rows).astype(np.int64),
        "income": np.round(rng.normal(50_000, 8_000, rows) + (city == "north") * 10_000, 2),
        "city": city,
        "member": rng.random(rows) < 0.3,
    })


def test_table_synthesizer_fits_samples_saves_and_loads(no_s3, tmp_path):
    from gan_core import TableSynthesizer

    df = small_table()
    synthesizer = TableSynthesizer(steps=40, select_every=20, select_rows=100, progress=False).fit(df, condition="city")
    rows = synthesizer.sample(60, seed=3)
    assert list(rows.columns) == list(df.columns) and len(rows) == 60
    assert rows.dtypes.to_dict() == df.dtypes.to_dict()
    assert set(rows["city"]) <= set(df["city"]) and rows["member"].isin([True, False]).all()
    assert rows["age"].between(0, 200).all()
    pd.testing.assert_frame_equal(synthesizer.sample(60, seed=3), rows)  # the same seed, the same rows
    assert not synthesizer.sample(60, seed=4).equals(rows)
    by_city = synthesizer.sample(class_counts={"south": 7, "east": 4}, seed=3)
    assert by_city["city"].value_counts().to_dict() == {"south": 7, "east": 4}

    saved = synthesizer.save(tmp_path / "model")
    # What sampling needs, no resume state (issue 25: that stays with checkpoints)
    assert sorted(p.name for p in saved.iterdir()) == ["discriminator.safetensors", "generator.safetensors",
                                                       "meta.json"]
    loaded = TableSynthesizer.load(saved)
    pd.testing.assert_frame_equal(loaded.sample(60, seed=3), rows)
    pd.testing.assert_frame_equal(loaded.sample(class_counts={"south": 7, "east": 4}, seed=3), by_city)
    with pytest.raises(FileExistsError, match="already exists"):
        synthesizer.save(saved)


def test_a_saved_table_synthesizer_is_a_model_the_generate_stage_samples(no_s3, tmp_path):
    from gan_core import TableSynthesizer
    from gan_core.kinds import kind_of
    from gan_core.stages.generate import plan_generation, run_shard, summarize_shards

    synthesizer = TableSynthesizer(steps=20, select_every=0, progress=False).fit(small_table(), condition="city")
    model_dir = synthesizer.save(tmp_path / "model")
    assert kind_of(model_dir) == "table"
    params = Params(generate=GenerateConfig(num_samples=30, shard_size=30, seed=5))
    planned = plan_generation(params, model_dir, tmp_path / "out")
    results = [run_shard(params, model_dir, i, quota, planned["rule"], tmp_path / "out")
               for i, quota in planned["shards"]]
    summary = summarize_shards(params, results, planned["rule"])
    shard = pq.read_table(summary["shard_files"][0]).to_pandas()
    # The stage's rows are the library's for the same seed, plus the seed and d_score columns.
    pd.testing.assert_frame_equal(shard[list(small_table().columns)], synthesizer.sample(30, seed=5))
    assert summary["kind"] == "table" and summary["sample_count"] == 30


def test_kind_of_reads_params_prepared_data_and_models(tmp_path, tiny_model_dir):
    from gan_core.images.data import prepare_dataset
    from gan_core.kinds import kind_of
    from gan_core.tables.data import prepare_table

    small_table().to_csv(tmp_path / "people.csv", index=False)
    assert kind_of(Params(prepare={"source": str(tmp_path / "people.csv")})) == "table"
    assert kind_of(Params()) == "image"  # the bundled digits
    prepare_table(str(tmp_path / "people.csv"), tmp_path / "people.npz", 0.15, 0.15, 0)
    prepare_dataset("bundled:digits", tmp_path / "digits.npz", 0.15, 0.15, 0)
    assert (kind_of(tmp_path / "people.npz"), kind_of(tmp_path / "digits.npz")) == ("table", "image")
    assert kind_of(tiny_model_dir) == "image"


def tiny_image_synthesizer():
    from gan_core import ImageSynthesizer

    train = TrainConfig(**(TINY["train"] | {"epochs": 1, "select_every": 0}))
    return ImageSynthesizer(ModelConfig(**TINY["model"]), train, progress=False)


def test_image_synthesizer_fits_an_array_samples_by_class_saves_and_loads(no_s3, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)  # (N, 8, 8) grey
    synthesizer = tiny_image_synthesizer().fit(images, digits.target)
    out = synthesizer.sample(class_counts={3: 4, 7: 2}, seed=1)
    assert out.images.shape == (6, 8, 8, 1) and out.images.dtype == np.uint8
    assert out.labels.tolist() == [3, 3, 3, 3, 7, 7] and out.names == ["3"] * 4 + ["7"] * 2
    assert out.images.std() > 0  # not a blank array
    again = synthesizer.sample(class_counts={3: 4, 7: 2}, seed=1)
    np.testing.assert_array_equal(again.images, out.images)
    assert len(synthesizer.sample(25, seed=1)) == 25

    loaded = type(synthesizer).load(synthesizer.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.sample(class_counts={3: 4, 7: 2}, seed=1).images, out.images)
    np.testing.assert_array_equal(loaded.sample(class_counts={3: 4, 7: 2}, seed=1).d_scores, out.d_scores)


def test_image_synthesizer_refuses_float_images(no_s3):
    from gan_core.errors import DataError

    with pytest.raises(DataError, match=r"fit: expected uint8 images .* \(got float64 \(4, 8, 8\)\)"):
        tiny_image_synthesizer().fit(np.zeros((4, 8, 8)), [0, 1, 0, 1])


def test_a_bad_setting_is_one_line_naming_its_key():
    from gan_core import ImageSynthesizer, TableSynthesizer
    from gan_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"^TableSynthesizer: unknown key table.step \(did you mean table.steps\?\)$"):
        TableSynthesizer(step=100)
    with pytest.raises(ConfigError, match=r"^ImageSynthesizer: train.epochs: input should be greater than or equal "
                                          r"to 1 \(got 0\)$"):
        ImageSynthesizer(epochs=0)


def test_the_library_api_imports_neither_boto3_nor_prefect():
    code = ("import sys; from gan_core import TableSynthesizer, ImageSynthesizer; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'prefect', 'dvc'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_publish_follows_generate_publish(monkeypatch):
    from gan_core.stages.generate import publishes

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    auto, off, on = (Params(generate=GenerateConfig(publish=value)) for value in ("auto", False, True))
    assert (publishes(auto), publishes(off), publishes(on)) == (False, False, True)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert (publishes(auto), publishes(off), publishes(on)) == (True, False, True)


@pytest.mark.parametrize("publish", [False, "auto"])
def test_the_generate_stage_without_s3_writes_local_shards_and_says_how_to_publish(
        publish, tiny_model_dir, prefect_api_url, tmp_path):
    """`python -m flows.generate`, dvc.yaml's command, in a project with a trained model and no S3."""
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "models" / "digits")
    params = {section: dict(values) for section, values in TINY.items()}
    params["generate"] |= {"name": "local-only", "publish": publish}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_api_url}
    if publish is False:  # an endpoint where nothing listens: touching S3 would fail the run
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    done = subprocess.run([sys.executable, "-m", "flows.generate"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted((tmp_path / "data" / "generated" / "digits").glob("part-*.parquet"))
    assert [pq.read_metadata(s).num_rows for s in shards] == [50, 50, 20]
    why = "generate.publish is false" if publish is False else "no S3 endpoint set"
    said = [line for line in (done.stdout + done.stderr).splitlines() if "not published" in line]
    assert len(said) == 1 and f"120 samples (acceptance 1.00) -> data/generated/digits/ (not published: {why}; " \
                               "to publish: configure S3 (`source .ganforge/s3.env`" in said[0], said
