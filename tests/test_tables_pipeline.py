"""Tables through the pipeline: a small hostile table (odd column names, `seed` and `d_score` taken, missing values in
every kind) prepared, trained, evaluated, generated and published through real DVC, Prefect and SeaweedFS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gan_core import registry
from gan_core.config import ConfigError, parse_params
from gan_core.errors import DataError
from gan_core.fingerprint import data_fingerprint
from gan_core.layout import Layout
from gan_core.publication.publish import publish_model
from gan_core.publication.read import download_dataset, list_versions, read_manifest
from gan_core.publication.s3 import MANIFEST
from gan_core.tables.data import load_prepared_table, prepare_table, prepared_kind
from gan_core.tables.generate import added_columns
from tests.helpers import ROOT, git_commit, make_project, run, tiny_project_params

SPECIES = ["Adélie", "Gentoo", "Chin strap"]
# A few dozen steps of a narrow row GAN: seconds on 2 busy cores; nothing here measures quality.
TINY_TABLE = {"embedding_dim": 16, "mapping_dim": 16, "generator_dims": [32, 32], "discriminator_dims": [32, 32],
              "pac": 5, "batch_size": 50, "steps": 30, "select_every": 10, "select_rows": 100,
              "checkpoint_every": 10, "gmm_components": 3}


# Invented names, in no Faker list: a generated row can never hold one by chance.
FIRST = ["Zorbul", "Quilliam", "Ystrida", "Vexley", "Pomfret", "Ulvhild", "Grisandre", "Oxtavia", "Brannock",
         "Thessaly-Jo", "Merriwick", "Caspiane"]
LAST = ["Quenttix", "Marrowbane", "Zelenkov-Ray", "Ottersby", "Flinchcombe", "Dravenholt", "Pellicorn", "Wyrmsley",
        "Oakenshire", "Brambleton", "Sturmfeld", "Ivelquist"]
PERSONAL = ("customer id", "name", "e-mail", "phone")  # found by inference: never modelled, generated afresh


def personal_values(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A customer's ID, full name, e-mail and phone number per row: the values no published byte may hold."""
    first, last = rng.choice(FIRST, rows), rng.choice(LAST, rows)
    ids = rng.permutation(np.arange(10, 10 + 5 * rows, 5))
    return {"customer id": np.array([f"CUST-{i:05d}" for i in ids]),
            "name": np.char.add(np.char.add(first, " "), last),
            "e-mail": np.array([f"{f.lower()}.{v.lower()}{n}@corpmail.test" for f, v, n in zip(first, last, ids)]),
            "phone": np.array([f"+44 20 7946 {n:04d}" for n in rng.integers(0, 10000, rows)])}


def hostile_table(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """Penguin-like rows: spaces, quotes and unicode in names, `seed` and `d_score` already taken, every kind
    (continuous, integer, categorical, boolean, datetime) with missing values, a customer's personal data
    (PERSONAL) and two exact duplicate rows."""
    rng = np.random.default_rng(seed)
    species = rng.choice(SPECIES, rows, p=[0.5, 0.35, 0.15])
    people = personal_values(rows, np.random.default_rng(seed + 1000))
    frame = pd.DataFrame({
        "customer id": people["customer id"],
        "species": species,
        "name": people["name"],
        "body mass (g)": (np.where(species == "Gentoo", 5000, 3700) + rng.normal(0, 300, rows)).round(1),
        'bill "length"': rng.normal(44, 5, rows).round(2),
        "flippers": pd.array(rng.integers(170, 230, rows), dtype="Int64"),
        "île": rng.choice(["Biscoe", "Dream", "Torgersen"], rows),
        "seed": rng.integers(0, 5, rows),
        "d_score": rng.random(rows),
        "male": pd.array(rng.random(rows) < 0.5, dtype="boolean"),
        "seen": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, rows), unit="D"),
        "e-mail": people["e-mail"],
        "phone": people["phone"],
    })
    for column in ("body mass (g)", 'bill "length"', "flippers", "île", "male", "seen"):
        frame.loc[rng.random(rows) < 0.05, column] = None
    return pd.concat([frame.iloc[:-2], frame.iloc[:2]], ignore_index=True)  # 2 exact duplicates: dropped


def table_params(name: str, dataset: str = "hostile") -> dict:
    params = tiny_project_params(name)
    params["prepare"] |= {"dataset": dataset, "source": f"data/raw/{dataset}.parquet", "target": "species"}
    params["table"] |= TINY_TABLE
    params["evaluate"]["num_samples"] = 100
    params["generate"] |= {"class_counts": {"Adélie": 60, "Gentoo": 40, "Chin strap": 20},
                           "rejection": {"enabled": True, "burn_in": 300, "target_acceptance": 0.5}}
    del params["generate"]["num_samples"]  # the sum of class_counts
    return params


# --- prepare, names, params: no training -------------------------------------------------------

def test_prepare_drops_duplicates_and_splits_stratified_and_reproducibly(tmp_path):
    source = tmp_path / "hostile.parquet"
    hostile_table().to_parquet(source, index=False)
    summary = prepare_table(str(source), tmp_path / "a.npz", 0.15, 0.15, 0, target="species")
    prepare_table(str(source), tmp_path / "b.npz", 0.15, 0.15, 0, target="species")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert summary["duplicates_removed"] == 2 and summary["train"] + summary["validation"] + summary["test"] == 198
    assert prepared_kind(tmp_path / "a.npz") == "table"
    data = load_prepared_table(tmp_path / "a.npz")
    assert data.schema.condition == "species" and data.class_names == sorted(SPECIES)
    modelled = hostile_table().drop(columns=list(PERSONAL))
    assert list(data.train.columns) == list(modelled.columns)  # personal data never reaches the prepared splits
    assert list(data.train.dtypes) == list(modelled.dtypes)  # the user's dtypes, exactly
    rows = {split: set(map(tuple, frame.astype(str).to_numpy())) for split, frame in data.splits().items()}
    assert not rows["train"] & rows["validation"] and not rows["train"] & rows["test"]
    for frame in data.splits().values():  # every species in every split
        assert set(frame["species"]) == set(SPECIES)
    assert set(data_fingerprint(tmp_path / "a.npz")["splits"]) == {"train", "validation", "test"}


def test_a_csv_and_a_folder_of_parquet_files_are_sources_too(tmp_path):
    frame = hostile_table(120)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "parts").mkdir()
    frame.iloc[:60].to_parquet(tmp_path / "parts" / "a.parquet", index=False)
    frame.iloc[60:].to_parquet(tmp_path / "parts" / "b.parquet", index=False)
    from_csv = prepare_table(str(tmp_path / "rows.csv"), tmp_path / "csv.npz", 0.2, 0.2, 1)
    from_folder = prepare_table(str(tmp_path / "parts"), tmp_path / "folder.npz", 0.2, 0.2, 1)
    assert from_csv["train"] + from_csv["validation"] + from_csv["test"] == 118
    assert from_folder["train"] + from_folder["validation"] + from_folder["test"] == 118


def test_added_columns_take_a_free_name():
    assert added_columns(["a", "b"]) == {"seed": "seed", "d_score": "d_score"}
    assert added_columns(["seed", "_seed", "d_score"]) == {"seed": "__seed", "d_score": "_d_score"}


def test_table_params_parse_and_name_what_is_wrong(tmp_path):
    params = parse_params(table_params("x"))
    assert params.prepare.target == "species" and params.table.steps == 30
    with pytest.raises(ConfigError, match=r"prepare\.columns\.age: input should be 'continuous'"):
        parse_params({"prepare": {"columns": {"age": "number"}}})
    with pytest.raises(ConfigError, match=r"unknown key table\.stepz \(did you mean table\.steps\?\)"):
        parse_params({"table": {"stepz": 3}})
    from gan_core.stages.prepare import run_prepare
    layout = Layout(tmp_path)
    (layout.raw).mkdir(parents=True)
    hostile_table().to_parquet(layout.raw / "hostile.parquet", index=False)
    wrong = parse_params({"prepare": {"source": str(layout.raw / "hostile.parquet"), "target": "speciess"}})
    with pytest.raises(ValueError, match=r"prepare\.target: no column 'speciess'"):
        run_prepare(wrong, layout)
    images = parse_params({"prepare": {"target": "species"}})
    with pytest.raises(DataError, match=r"prepare\.target is for a table source .* set prepare\.target: null$"):
        run_prepare(images, layout)


def test_params_yaml_spells_out_the_table_defaults():
    # params.yaml's values win over TableConfig's: a default retuned in code must be retuned there too.
    from gan_core.config import TableConfig, load_params

    for path in (ROOT / "params.yaml", ROOT / "examples" / "fashion-mnist" / "params.yaml"):
        assert load_params(path).table == TableConfig(), path


def test_the_quality_gate_reads_a_tables_own_metrics():
    gate = parse_params({}).gate
    table = {"kind": "table", "quality": 0.8, "utility": 0.95, "dcr_ratio": 1.0}
    assert registry.check_gate(table, gate).passed  # no image metric (fd_ratio, ...) is asked of a table
    assert registry.check_gate({**table, "quality": 0.6}, gate).misses == ["quality 0.6 < 0.7 (gate.quality_min)"]
    assert registry.check_gate({**table, "dcr_ratio": None}, gate).misses == [
        "dcr_ratio is missing from the evaluation (gate.dcr_ratio_min: 0.9)"]
    images = {"fd_ratio": 1.2, "utility": 0.95, "label_consistency": 0.97, "memorisation": 0.0}
    assert registry.check_gate(images, gate).passed  # nor a table metric of images


# --- the whole pipeline: dvc repro -> a published, downloaded, verified dataset --------------------

NAME = "hostile-synthetic"


@pytest.fixture(scope="module")
def project(pipeline_env, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("table-project")
    make_project(root, table_params(NAME))
    hostile_table().to_parquet(root / "data" / "raw" / "hostile.parquet", index=False)
    run(["git", "init", "-q"], root, pipeline_env)
    run(["dvc", "add", "data/raw/hostile.parquet"], root, pipeline_env)
    git_commit(root, pipeline_env, "a table")
    # `dvc repro` a stage at a time (each runs what it depends on first): each call within run()'s 10 minutes
    # on a loaded machine, where SDMetrics' reports alone took minutes.
    for stage in ("train", "evaluate", "generate"):
        done = run(["dvc", "repro", stage], root, pipeline_env)
        REPRO_OUTPUT.append(done.stdout + done.stderr)
    return root


REPRO_OUTPUT: list[str] = []  # what `dvc repro` printed (its stages' logs): searched for personal data


def test_repro_publishes_a_table_shaped_like_the_input(project, pipeline_env, s3_server, s3_env, tmp_path):
    versions = list_versions(s3_server.bucket, NAME, client=s3_server.client())
    assert len(versions) == 1
    manifest = versions[0]
    assert manifest["kind"] == "table" and manifest["schema_version"] == 1
    assert manifest["added_columns"] == {"seed": "_seed", "d_score": "_d_score"}
    assert manifest["class_counts"] == {"Adélie": 60, "Gentoo": 40, "Chin strap": 20}
    assert manifest["sample_count"] == 120 and len(manifest["shards"]) == 3
    assert 0 < manifest["acceptance_rate"] < 1 and manifest["rejection"]["enabled"]
    meta = json.loads((project / "models" / "hostile" / "meta.json").read_text())
    assert manifest["generator_sha256"] == meta["files"]["generator.safetensors"]
    assert manifest["dvc"]["source"]["md5"] is not None
    # As a user with .ganforge/s3.env sourced: the version folder reads as one DataFrame.
    frame = pd.read_parquet(manifest_uri(s3_server.bucket, manifest))
    real = hostile_table()
    assert frame.shape == (120, real.shape[1] + 2)
    assert list(frame.columns) == [*real.columns, "_seed", "_d_score"]
    assert frame.dtypes.iloc[:-2].to_dict() == real.dtypes.to_dict()
    assert frame["_seed"].dtype == np.int64 and frame["_d_score"].between(0, 1).all()
    assert frame["species"].value_counts().to_dict() == {"Adélie": 60, "Gentoo": 40, "Chin strap": 20}
    out = run(["ganforge", "download", NAME, "--to", str(tmp_path)], project, pipeline_env)
    folder = Path(json.loads(out.stdout))
    assert sorted(p.name for p in folder.iterdir()) == ["_card", "_manifest.json", "part-00000.parquet",
                                                         "part-00001.parquet", "part-00002.parquet"]
    assert sorted(p.name for p in (folder / "_card").iterdir()) == ["README.md", "report.html"]
    assert pd.read_parquet(folder).equals(frame)


def test_repro_publishes_and_logs_no_real_personal_value(project, pipeline_env, s3_server):
    """Through `dvc repro` and `ganforge models publish`: no real customer ID, name, e-mail or phone number in
    any object of the bucket (model, shards, card, manifest) nor in what the stages logged."""
    from tests.test_tables_personal import needles, search_bucket

    published = run(["ganforge", "models", "publish", "--version", "v1"], project, pipeline_env)
    wanted = needles(hostile_table())
    found, objects = search_bucket(s3_server.client(), s3_server.bucket, wanted, (f"datasets/{NAME}/", "models/hostile/"))
    assert objects >= 10 and found == {}
    logs = "".join(REPRO_OUTPUT) + published.stdout + published.stderr
    assert "personal_columns" in logs and [n for n in wanted if n.decode() in logs] == []
    assert (project / "models" / "hostile" / "meta.json").is_file()
    assert not {n for n in wanted if n in (project / "models" / "hostile" / "meta.json").read_bytes()}


def manifest_uri(bucket: str, manifest: dict) -> str:
    return f"s3://{bucket}/datasets/{manifest['name']}/{manifest['version']}/"


def test_repro_evaluates_the_table(project):
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert metrics["kind"] == "table" and 0.0 <= metrics["d_auc"] <= 1.0
    assert set(metrics["d_score_real"]) == {"mean", "p10", "p50", "p90"}
    plots = project / "plots"
    assert (plots / "samples.png").read_bytes().startswith(b"\x89PNG")
    assert (plots / "d_scores.csv").read_text().startswith("score,real,generated")
    assert (plots / "losses.csv").read_text().startswith("step,")
    # The table's per-class plots: one PNG of marginals per value of the condition column, named safely.
    assert sorted(p.name for p in (plots / "classes").iterdir()) == ["Ad_lie.png", "Chin_strap.png", "Gentoo.png"]
    assert len(list((plots / "marginals").glob("*.csv"))) == len(hostile_table().columns) - len(PERSONAL)


def test_repro_reruns_exactly_what_changed(project, pipeline_env):
    assert "Running stage" not in run(["dvc", "repro"], project, pipeline_env).stdout
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["table"]["steps"] = 20
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    changed = run(["dvc", "repro"], project, pipeline_env)
    ran = {line.split("'")[1] for line in changed.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "generate"}


# --- the Prefect deployments take a table unchanged ------------------------------------------------

DEPLOYED = "deploy-table-test"


@pytest.fixture(scope="module")
def trained_table(tmp_path_factory):
    """(params, layout) of the hostile table prepared and trained through the stage functions (seconds)."""
    from gan_core.stages.prepare import run_prepare
    from gan_core.stages.train import run_train

    layout = Layout(tmp_path_factory.mktemp("table-model"))
    layout.raw.mkdir(parents=True)
    hostile_table().to_parquet(layout.raw / "hostile.parquet", index=False)
    raw = table_params(DEPLOYED)
    raw["prepare"]["source"] = str(layout.raw / "hostile.parquet")
    params = parse_params(raw)
    run_prepare(params, layout)
    run_train(params, layout, progress=False)
    return params, layout


@pytest.fixture(scope="module")
def table_model_dir(trained_table) -> Path:
    params, layout = trained_table
    return layout.model(params)


def test_generate_publish_download_a_table_and_each_row_regenerates(trained_table, s3_env, tmp_path):
    from gan_core.stages.generate import run_generate, run_publish
    from gan_core.tables.sampling import load_table_model, sample_rows

    params, layout = trained_table
    summary = run_generate(params, layout.generated(params), layout)
    assert summary["class_counts"] == {"Adélie": 60, "Gentoo": 40, "Chin strap": 20}
    uri = run_publish(params, summary, "v1", s3_env.bucket, layout)
    folder = download_dataset(s3_env.bucket, DEPLOYED, "v1", tmp_path)  # every sha256 verified
    frame, real = pd.read_parquet(folder), hostile_table()
    assert frame.equals(pd.read_parquet(uri)) and len(frame) == 120
    assert list(frame.columns) == [*real.columns, "_seed", "_d_score"]
    assert frame.dtypes.iloc[:-2].to_dict() == real.dtypes.to_dict()
    assert frame["seed"].dtype == real["seed"].dtype  # the user's own `seed` column, untouched
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["added_columns"] == {"seed": "_seed", "d_score": "_d_score"} and manifest["kind"] == "table"
    assert [e["key"].rsplit("/", 1)[1] for e in manifest["files"]] == ["README.md", "report.html"]
    model = load_table_model(layout.model(params))
    again, logits = sample_rows(model, frame["_seed"].to_numpy()[:5], frame["species"].tolist()[:5])
    # A row from its seed (and its value of the condition column), whichever rows it was generated with.
    pd.testing.assert_frame_equal(again, frame.iloc[:5, :-2], check_exact=False, rtol=1e-4)
    assert np.allclose(1 / (1 + np.exp(-logits.astype(np.float64))), frame["_d_score"].iloc[:5])
    from gan_core.loader import SyntheticImageDataset, load_dataframe
    # The image loader refuses a table at once, naming what reads it (it used to fail on iteration, KeyError).
    with pytest.raises(ValueError, match=r"^deploy-table-test v1 is a table, not images: read it with "
                                         r"gan_core\.loader\.load_dataframe\('deploy-table-test'\)"):
        SyntheticImageDataset(DEPLOYED, "v1", bucket=s3_env.bucket)
    assert load_dataframe(DEPLOYED, "v1", bucket=s3_env.bucket).equals(frame)


def test_a_scheduled_generation_publishes_a_table(server_env, table_model_dir, s3_server, s3_env, tmp_path_factory):
    import datetime as dt

    from prefect.client.orchestration import SyncPrefectClient

    from gan_core.layout import default_version
    from tests.test_deployments import create_process_pools, first_scheduled_run, pull_forward, run_worker_once

    project = tmp_path_factory.mktemp("deployed-table")
    params = table_params(DEPLOYED, dataset="deploytable")
    make_project(project, params)
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    generation = next(d for d in config["deployments"] if d["name"] == "batch-generation")
    generation["parameters"] |= {"dataset_name": DEPLOYED, "rejection": True}
    (project / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    publish_model(table_model_dir, bucket=s3_server.bucket, name="deploytable", version="v1", manifest={},
                  client=s3_server.client())
    registry.promote(s3_server.bucket, "deploytable", "v1", client=s3_server.client())
    create_process_pools(server_env["PREFECT_API_URL"], ["cpu", "gpu"])
    run(["prefect", "--no-prompt", "deploy", "--all"], project, server_env)
    with SyncPrefectClient(server_env["PREFECT_API_URL"]) as client:
        flow_run = first_scheduled_run(client, client.read_deployment_by_name("generate/batch-generation").id)
        pull_forward(client, flow_run.id)
        run_worker_once(project, server_env)
        assert client.read_flow_run(flow_run.id).state.is_completed()
    version = default_version(flow_run.expected_start_time.astimezone(dt.timezone.utc))
    manifest = read_manifest(s3_server.bucket, DEPLOYED, version, client=s3_server.client())
    assert manifest["kind"] == "table" and manifest["model_uri"] == f"s3://{s3_server.bucket}/models/deploytable/v1/"
    assert manifest["class_counts"] == {"Adélie": 60, "Gentoo": 40, "Chin strap": 20}
    frame = pd.read_parquet(manifest_uri(s3_server.bucket, manifest))
    assert list(frame.columns) == [*hostile_table().columns, "_seed", "_d_score"] and len(frame) == 120


from tests.test_deployments import server_env  # noqa: E402,F401  (its real `prefect server`, this module's own)
