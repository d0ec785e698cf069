"""Personal data in a table, by default as SDV treats it: identifiers and personal columns are found, never
modelled, and generated afresh; none of their real values reaches the model, the published rows, the card,
the manifest or the logs (searched byte by byte in a real SeaweedFS)."""

from __future__ import annotations

import io
import json
import logging
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from gan_core.config import parse_params
from gan_core.layout import Layout
from gan_core.tables.personal import fresh_id, id_format
from gan_core.tables.schema import TableError, infer_schema
from tests.test_tables_pipeline import PERSONAL, TINY_TABLE, hostile_table, table_params


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def customers(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "account_id": rng.permutation(np.arange(70001, 70001 + rows)),
        "Full Name": [f"Person {i}" for i in range(rows)],
        "contact": [f"user{i}@mail.test" for i in range(rows)],
        "mobile": [f"(555) {i:03d}-{i * 7 % 10000:04d}" for i in range(rows)],
        "home address": [f"{i} Elm Street, Springfield" for i in range(rows)],
        "notes": [f"called on day {i} about the late delivery of order {i * 3}" for i in range(rows)],
        "ref": [f"R{i:06d}X" for i in rng.permutation(rows)],  # no telling name: distinct per row is enough
        "client": [f"{a} {b}" for a, b in zip(rng.choice(["Ada", "Mary Jo", "Lin", "Omar", "Zoe", "Ivan", "Eli"], rows),
                                               rng.choice(["Okafor", "Smith", "Lovelace", "O'Neil", "Berg", "Diaz",
                                                           "Nakamura", "Kowalski", "Haddad", "Moreau"], rows))],
        "ship to": [f"{i + 1} {street}" for i, street in enumerate(rng.choice(["Elm St", "Oak Avenue, Leeds"], rows))],
        "plan": rng.choice(["basic", "pro"], rows),
        "age": rng.integers(18, 80, rows),
        "visits": rng.integers(0, 50, rows),  # a number, not an id: it is not named like one
    })


def test_inference_finds_identifiers_and_personal_data_by_name_and_values():
    schema = infer_schema(customers(), target="plan")
    assert schema.personal_kinds() == {"account_id": "id", "Full Name": "name", "contact": "email", "mobile": "phone",
                                       "home address": "address", "notes": "text", "ref": "id", "client": "name",
                                       "ship to": "address"}
    assert schema.names == ["plan", "age", "visits"]  # what the model learns
    assert schema.output_names == list(customers().columns)
    why = {p.name: p.why for p in schema.personal}
    assert why["contact"] == "values are e-mail addresses" and why["ref"] == "strings distinct per row"
    assert why["client"] == "values are people's names" and why["ship to"] == "values are street addresses"
    # Few distinct values, or words that are not names: modelled as categories.
    plain = pd.DataFrame({"tier": ["Gold Plus", "Silver", "Bronze Basic"] * 40, "city": ["Leeds", "Oslo"] * 60})
    assert infer_schema(plain).personal == ()


def test_overrides_set_a_kind_or_drop_a_column_and_a_personal_target_names_the_fix():
    schema = infer_schema(customers(), {"notes": "drop", "plan": "text", "contact": "categorical"})
    assert schema.dropped == ("notes",) and "notes" not in schema.output_names
    assert schema.personal_kinds()["plan"] == "text" and "contact" in schema.names
    with pytest.raises(TableError, match=r"^prepare\.target: column 'Full Name' is name \(personal data or an "
                                         r"identifier, never modelled\); set prepare\.columns: \{Full Name: "
                                         r"categorical\} to model it$"):
        infer_schema(customers(), target="Full Name")


def test_fresh_keys_keep_the_format_are_unique_and_never_a_real_one():
    real = pd.Series([f"CUST-{i:05d}" for i in range(10, 3010, 3)])
    params = id_format(real)
    assert params == {"pattern": "CUST-#####", "start": 4000}
    seeds = np.r_[np.arange(2000), (1 << 24) + np.arange(5)]  # a second shard's seeds too
    keys = [fresh_id(params, int(s), np.random.default_rng(int(s))) for s in seeds]
    assert len(set(keys)) == len(keys) and not set(keys) & set(real)
    assert all(re.fullmatch(r"CUST-\d{5,}", k) for k in keys) and keys[0] == "CUST-04000"
    assert id_format(pd.Series(np.arange(70001, 70201))) == {"start": 80000}


def test_generated_people_are_consistent_per_row_and_regenerate_from_their_seed(tmp_path):
    from gan_core.config import TableConfig
    from gan_core.tables.sampling import load_table_model, sample_rows
    from gan_core.tables.train import train_table_gan

    frame = customers()
    frame.loc[::4, "mobile"] = None
    cfg = TableConfig(**TINY_TABLE | {"steps": 10, "checkpoint_every": 10})
    train_table_gan(frame, frame, infer_schema(frame, target="plan"), cfg, tmp_path / "m", seed=0)
    model = load_table_model(tmp_path / "m")
    rows, _ = sample_rows(model, np.arange(400))
    assert list(rows.columns) == list(frame.columns)
    first, last = (rows["Full Name"].str.split(" ", n=1).str[i].str.lower().str.replace(r"[^a-z]", "", regex=True)
                   for i in (0, 1))
    assert (rows["contact"].str.split("@").str[0].str.rstrip("0123456789") == first + "." + last).all()
    assert rows["contact"].str.endswith(("@example.com", "@example.net", "@example.org")).all()
    assert rows["account_id"].dtype == np.int64 and rows["account_id"].min() >= 80000
    assert rows["account_id"].is_unique and rows["ref"].is_unique
    assert 0.15 < rows["mobile"].isna().mean() < 0.35  # the real share of missing numbers: 25 %
    assert rows["mobile"].dropna().str.fullmatch(r"\(\d{3}\) \d{3}-\d{4}").all()
    again, _ = sample_rows(model, np.arange(390, 400))
    pd.testing.assert_frame_equal(again, rows.iloc[390:].reset_index(drop=True))
    meta = (tmp_path / "m" / "meta.json").read_text()
    assert "Person 1" not in meta and "mail.test" not in meta and "Elm Street" not in meta


def needles(frame: pd.DataFrame) -> set[bytes]:
    """Every real value of the personal columns, and each part of a name, as UTF-8 bytes."""
    values = {str(v) for column in PERSONAL for v in frame[column].dropna()}
    values |= {part for name in frame["name"] for part in name.split(" ")}
    return {v.encode() for v in values}


def leaks(blob: bytes, key: str, wanted: set[bytes]) -> list[str]:
    """The needles found in an object: in its bytes and, for Parquet (compressed), in its decoded values."""
    found = [n.decode() for n in wanted if n in blob]
    if key.endswith(".parquet"):
        text = pq.read_table(io.BytesIO(blob)).to_pandas().astype(str).to_csv().encode()
        found += [n.decode() for n in wanted if n in text]
    return found


def search_bucket(client, bucket: str, wanted: set[bytes], prefixes: tuple[str, ...]) -> tuple[dict[str, list[str]], int]:
    """Every object under PREFIXES (what one test published: other tests share the bucket) searched for WANTED."""
    found, count = {}, 0
    pages = (page for prefix in prefixes
             for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
    for page in pages:
        for entry in page.get("Contents", []):
            count += 1
            blob = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            if hits := leaks(blob, entry["Key"], wanted):
                found[entry["Key"]] = hits
    return found, count


def test_no_real_personal_value_is_published_or_logged(s3_env, tmp_path, caplog, capsys):
    """Prepare, train, evaluate, generate, publish the dataset and the model to a real SeaweedFS: not one real
    ID, name, e-mail or phone number in any object of the bucket, nor in the logs and stage summaries."""
    from gan_core import registry
    from gan_core.stages.evaluate import run_evaluate
    from gan_core.stages.generate import run_generate, run_publish
    from gan_core.stages.prepare import run_prepare
    from gan_core.stages.train import run_train

    caplog.set_level(logging.INFO)
    layout = Layout(tmp_path)
    layout.raw.mkdir(parents=True)
    real = hostile_table()
    real.to_parquet(layout.raw / "hostile.parquet", index=False)
    raw = table_params("personal-test")
    raw["prepare"] |= {"source": str(layout.raw / "hostile.parquet"), "dataset": "personal"}
    params = parse_params(raw)
    summaries = [run_prepare(params, layout), run_train(params, layout, progress=False)]
    metrics = run_evaluate(params, layout)  # bound to the model it measured, as the gate requires
    summary = run_generate(params, layout.generated(params), layout)
    uri = run_publish(params, summary, "v1", s3_env.bucket, layout)
    registry.run_publish_model(params, "v1", s3_env.bucket, metrics, layout)
    wanted = needles(real)
    assert len(wanted) > 600 and b"CUST-00940" in wanted  # the values searched for
    found, objects = search_bucket(s3_env.client, s3_env.bucket, wanted,
                                   (f"datasets/{params.generate.name}/", f"models/{params.prepare.dataset}/"))
    assert objects >= 8 and {key: len(hits) for key, hits in found.items()} == {}
    assert summaries[0]["personal_columns"] == {"customer id": "id (the column name says id)",
                                                "name": "name (the column name says name)",
                                                "e-mail": "email (values are e-mail addresses)",
                                                "phone": "phone (the column name says phone)"}
    logs = caplog.text + "".join(capsys.readouterr()) + json.dumps([summaries, metrics, summary], default=str)
    assert [n for n in wanted if n.decode() in logs] == []
    manifest = json.loads(s3_env.client.get_object(Bucket=s3_env.bucket,
                                                   Key="datasets/personal-test/v1/_manifest.json")["Body"].read())
    assert manifest["personal_columns"] == {"customer id": "id", "name": "name", "e-mail": "email", "phone": "phone"}
    frame = pd.read_parquet(uri)
    assert list(frame.columns[:-2]) == list(real.columns)
    # Fresh keys: the real format, counting up from above the real keys by seed (a later shard's seeds are
    # 2**24 apart, so its keys are wider), unique.
    assert frame["customer id"].str.fullmatch(r"CUST-\d{5,}").all() and frame["customer id"].is_unique
    assert frame["customer id"].iloc[0] == "CUST-02000"
    # The modelled columns still come from the model: the condition column holds what was asked.
    assert frame["species"].value_counts().to_dict() == {"Adélie": 60, "Gentoo": 40, "Chin strap": 20}


def test_the_needles_would_be_found(s3_env):
    """The search itself: a real value in a compressed Parquet shard, and in a JSON manifest, is found."""
    rows = hostile_table(20)
    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False, compression="zstd")
    wanted = needles(rows)
    assert set(leaks(buffer.getvalue(), "x.parquet", wanted)) == {n.decode() for n in wanted}
    assert leaks(json.dumps({"a": rows["e-mail"][3]}).encode(), "m.json", wanted) == [rows["e-mail"][3]]
