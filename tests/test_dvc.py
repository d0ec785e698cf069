"""DVC around the pipeline: the user's own data, a remote on S3, experiments, provenance in manifests."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from gan_core import registry
from gan_core.publication.read import list_versions, read_manifest
from gan_core.publication.s3 import MODELS_PREFIX, file_digest
from tests.helpers import git_commit, make_project, run, tiny_project_params, write_digit_images

NAME = "rgbdigits-synthetic"  # generate.name unset: it follows prepare.dataset
EXPERIMENTS = {"lr-fast": 0.002, "lr-slow": 0.00005}


@pytest.fixture(scope="module")
def project(pipeline_env, tmp_path_factory) -> Path:
    """A fresh clone trained on the user's own RGB digits through `make run`'s script, its results committed."""
    root = tmp_path_factory.mktemp("dvc-project")
    params = tiny_project_params(NAME)
    del params["generate"]["name"]  # as "Your own data" says: only prepare.dataset and prepare.source change
    params["prepare"] |= {"dataset": "rgbdigits", "source": "data/raw/rgbdigits"}
    params["train"]["epochs"] = 1
    make_project(root, params)
    write_digit_images(root / "data" / "raw" / "rgbdigits", per_class=20, rgb=True)
    run(["git", "init", "-q"], root, pipeline_env)
    run(["dvc", "add", "data/raw/rgbdigits"], root, pipeline_env)
    git_commit(root, pipeline_env, "the user's data")
    run(["bash", "scripts/run.sh"], root, pipeline_env)  # dvc repro, dvc push
    git_commit(root, pipeline_env, "results")
    return root


def locked_md5(project: Path, stage: str, path: str) -> str:
    outs = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["outs"]
    return next(out["md5"] for out in outs if out["path"] == path)


def test_a_second_clone_pulls_byte_identical_data_and_model(project, pipeline_env, s3_server, tmp_path):
    pushed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="dvc-store/")
    assert pushed["KeyCount"] > 200  # 200 raw PNGs, the prepared .npz, the model, the shards
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, pipeline_env)
    assert not (clone / "models" / "rgbdigits").exists()
    # As the README says for a bucket other than "ganforge": this clone's own config.local.
    run(["dvc", "remote", "modify", "--local", "storage", "url", f"s3://{s3_server.bucket}/dvc-store"],
        clone, pipeline_env)
    pulled = run(["dvc", "pull"], clone, pipeline_env)
    assert "fetched" in pulled.stdout
    assert run(["dvc", "status"], clone, pipeline_env).stdout.strip() == "Data and pipelines are up to date."
    outputs = ["data/prepared/rgbdigits.npz", "data/raw/rgbdigits/7/019.png",
               *(f"models/rgbdigits/{f.name}" for f in (project / "models" / "rgbdigits").iterdir())]
    assert len(outputs) >= 5
    for relpath in outputs:
        assert (clone / relpath).read_bytes() == (project / relpath).read_bytes(), relpath
    again = run(["dvc", "repro"], clone, pipeline_env)
    assert "Running stage" not in again.stdout


def test_manifest_records_git_dvc_hashes_and_params(project, pipeline_env):
    out = run(["ganforge", "list", "--long"], project, pipeline_env).stdout
    manifest = json.loads(out)[NAME][0]  # the oldest: the one `make run` published
    revision = run(["git", "rev-parse", "HEAD~1"], project, pipeline_env).stdout.strip()
    assert manifest["git"] == {"revision": revision, "dirty": False, "changed": []}
    source = yaml.safe_load((project / "data" / "raw" / "rgbdigits.dvc").read_text())["outs"][0]["md5"]
    assert manifest["dvc"] == {
        "source": {"path": "data/raw/rgbdigits", "md5": source},
        "data": {"path": "data/prepared/rgbdigits.npz", "in_dvc_lock": True,
                 "md5": locked_md5(project, "prepare", "data/prepared/rgbdigits.npz")},
        "model": {"path": "models/rgbdigits", "in_dvc_lock": True,
                  "md5": locked_md5(project, "train", "models/rgbdigits")},
    }
    assert manifest["params"]["prepare"]["source"] == "data/raw/rgbdigits"
    assert "shards" not in manifest  # --long without NAME leaves the shard lists out


def test_make_run_promotes_its_model_for_the_nightly_generation(project, s3_server):
    client = s3_server.client()
    version = registry.production_version(s3_server.bucket, "rgbdigits", client=client)
    manifest = read_manifest(s3_server.bucket, "rgbdigits", version, MODELS_PREFIX, client)
    generator = next(e for e in manifest["files"] if e["key"].endswith("/ema.safetensors"))
    assert generator["sha256"] == file_digest(project / "models" / "rgbdigits" / "ema.safetensors")[0]
    assert manifest["metrics"] == json.loads((project / "metrics" / "eval.json").read_text())


def test_experiments_run_show_and_diff(project, pipeline_env, s3_env, tmp_path):
    production = list_versions(s3_env.bucket, NAME, client=s3_env.client)
    for name, lr in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "-n", name, "-S", f"train.lr_g={lr}", "-S", "model.d_hidden=8"],
            project, pipeline_env)
    shown = run(["dvc", "exp", "show", "--csv"], project, pipeline_env).stdout
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(shown)) if row["Experiment"]}
    assert set(rows) == set(EXPERIMENTS)
    for name, lr in EXPERIMENTS.items():
        assert float(rows[name]["train.lr_g"]) == lr and rows[name]["model.d_hidden"] == "8"
        committed = run(["git", "show", f"{rows[name]['rev']}:metrics/eval.json"], project, pipeline_env).stdout
        assert float(rows[name]["d_auc"]) == pytest.approx(json.loads(committed)["d_auc"])
    assert rows["lr-fast"]["d_auc"] != rows["lr-slow"]["d_auc"]

    diff = json.loads(run(["dvc", "metrics", "diff", "lr-fast", "lr-slow", "--json"], project, pipeline_env).stdout)
    d_auc = diff["metrics/eval.json"]["d_auc"]
    assert (d_auc["old"], d_auc["new"]) == pytest.approx((float(rows["lr-fast"]["d_auc"]),
                                                          float(rows["lr-slow"]["d_auc"])))
    plots = json.loads(run(["dvc", "plots", "diff", "lr-fast", "lr-slow", "-o", str(tmp_path), "--json"],
                           project, pipeline_env).stdout)
    assert plots["data"]["losses"][0]["revisions"] == ["lr-fast", "lr-slow"]
    assert {p.name for p in tmp_path.glob("*samples.png")} == {"lr-fast_plots_samples.png",
                                                              "lr-slow_plots_samples.png"}

    # Experiments never publish to production: `latest` there is still what `make run` published.
    assert list_versions(s3_env.bucket, NAME, client=s3_env.client) == production != []
    # Each published under experiments/<exp>/datasets/, its manifest saying it came from uncommitted params.
    for name, lr in EXPERIMENTS.items():
        manifests = list_versions(s3_env.bucket, NAME, prefix=f"experiments/{name}/datasets",
                                  client=s3_env.client)
        assert [m["params"]["train"]["lr_g"] for m in manifests] == [lr]
        assert manifests[0]["git"]["dirty"] is True and manifests[0]["git"]["changed"] == ["params.yaml"]
