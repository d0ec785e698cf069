"""A table's `--resume`: it goes on from checkpoints/, refuses another run's state (other data, settings or
code) as images do, and the exported model folder holds only what sampling needs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gan_core import fingerprint as fp
from gan_core.config import parse_params
from gan_core.layout import Layout
from gan_core.tables import train as table_train
from gan_core.tables.sampling import load_table_model, sample_rows
from tests.helpers import tiny_project_params
from tests.test_tables_pipeline import TINY_TABLE, hostile_table


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def prepared(tmp_path, **table):
    from gan_core.stages.prepare import run_prepare

    layout = Layout(tmp_path)
    layout.raw.mkdir(parents=True)
    hostile_table(120).to_parquet(layout.raw / "hostile.parquet", index=False)
    raw = tiny_project_params("resume")
    raw["prepare"] |= {"dataset": "hostile", "source": str(layout.raw / "hostile.parquet"), "target": "species"}
    raw["table"] |= TINY_TABLE | {"steps": 20, "checkpoint_every": 10} | table
    params = parse_params(raw)
    run_prepare(params, layout)
    return params, layout


def test_the_exported_model_holds_what_sampling_needs_and_resume_goes_on_from_checkpoints(tmp_path):
    from gan_core.stages.train import run_train

    params, layout = prepared(tmp_path)
    run_train(params, layout, progress=False)
    model_dir, checkpoint = layout.model(params), layout.checkpoints(params) / "table"
    assert sorted(p.name for p in model_dir.iterdir()) == ["discriminator.safetensors", "generator.safetensors",
                                                           "meta.json"]
    meta = json.loads((model_dir / "meta.json").read_text())
    assert not {"numpy_rng", "opt_groups", "pending"} & set(meta)
    assert (checkpoint / "state.safetensors").is_file()
    rows, _ = sample_rows(load_table_model(model_dir), np.arange(5))
    assert len(rows) == 5
    longer = params.model_copy(update={"table": params.table.model_copy(update={"steps": 30})})
    summary = run_train(longer, layout, resume=True, progress=False)
    assert summary["steps"] == 30  # went on from step 20, not from 0
    assert json.loads((checkpoint / "meta.json").read_text())["selection"]["history"][0]["step"] == 10


def test_a_table_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    from gan_core.stages.train import run_train

    params, layout = prepared(tmp_path)
    run_train(params, layout, progress=False)
    other = params.model_copy(update={"table": params.table.model_copy(update={"lr": 0.003})})
    with pytest.raises(fp.LineageError, match=r"table was trained with table\.lr 0\.0001 vs 0\.003 \(checkpoint vs "
                                              r"now\): delete it or rerun without --resume"):
        run_train(other, layout, resume=True, progress=False)


def test_a_table_resume_refuses_a_checkpoint_of_other_code(tmp_path, monkeypatch):
    from gan_core.stages.train import run_train

    params, layout = prepared(tmp_path)
    run_train(params, layout, progress=False)
    saved = json.loads((layout.checkpoints(params) / "table" / "meta.json").read_text())["fingerprint"]
    assert saved["code"] == fp.code_version("tables.train")  # the table fingerprint covers its code
    monkeypatch.setattr(table_train, "code_version", lambda module: "0" * 64)  # as after an edit of tables/
    with pytest.raises(fp.LineageError, match=r"with other gan_core code .*: delete it or rerun without --resume"):
        run_train(params, layout, resume=True, progress=False)
