"""Tables read and written as faithfully as SDV does: dates from a CSV as pandas reads it, each column's rounding,
values inside the training range without a pile-up at its ends, integers as integers."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from gan_core.config import parse_params
from gan_core.layout import Layout
from gan_core.tables.sampling import load_table_model, sample_rows
from gan_core.tables.schema import infer_kind
from tests.helpers import tiny_project_params
from tests.test_tables_pipeline import TINY_TABLE


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def customers_csv(rows: int = 240, seed: int = 0) -> str:
    """A customer CSV as a user has one: ISO dates with gaps, US-style dates, 2-decimal amounts, ages."""
    rng = np.random.default_rng(seed)
    days = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 700, rows), unit="D")
    frame = pd.DataFrame({"signup_date": days.strftime("%Y-%m-%d"), "last_order": days.strftime("%m/%d/%Y"),
                          "plan": rng.choice(["basic", "pro"], rows, p=[0.7, 0.3]),
                          "spend": rng.gamma(2.0, 30.0, rows).round(2),
                          "age": np.clip(rng.normal(40, 12, rows), 18, 90).round().astype(int)})
    frame.loc[rng.random(rows) < 0.1, "signup_date"] = None
    return frame.to_csv(index=False)


def test_iso_dates_in_a_csv_read_by_pandas_are_dates():
    frame = pd.read_csv(io.StringIO(customers_csv()))
    assert str(frame["signup_date"].dtype) in ("str", "string", "object")  # pandas 3: the `str` dtype
    assert infer_kind(frame["signup_date"]) == "datetime"
    assert infer_kind(frame["plan"]) == "categorical"
    assert infer_kind(frame["last_order"]) == "categorical"  # not ISO: only an override makes it a date


def test_a_datetime_override_on_csv_text_goes_through_prepare_train_and_sampling(tmp_path):
    from gan_core.stages.prepare import run_prepare
    from gan_core.stages.train import run_train

    layout = Layout(tmp_path)
    layout.raw.mkdir(parents=True)
    (layout.raw / "customers.csv").write_text(customers_csv())
    raw = tiny_project_params("customers")
    raw["prepare"] |= {"dataset": "customers", "source": str(layout.raw / "customers.csv"),
                       "columns": {"signup_date": "datetime", "last_order": "datetime"}, "target": "plan"}
    raw["table"] |= TINY_TABLE
    params = parse_params(raw)
    run_prepare(params, layout)
    run_train(params, layout, progress=False)
    model = load_table_model(layout.model(params))
    assert {c.name: c.kind for c in model.schema.columns}["last_order"] == "datetime"
    rows, _ = sample_rows(model, np.arange(200))
    signup = pd.to_datetime(rows["signup_date"], format="%Y-%m-%d")  # written as the source writes them
    last = pd.to_datetime(rows["last_order"], format="%m/%d/%Y")
    assert signup.notna().mean() > 0.5 and last.notna().all()
    assert signup.min() >= pd.Timestamp("2022-01-01") and last.max() <= pd.Timestamp("2023-12-31")


def bounded_table(rows: int = 500, seed: int = 0) -> pd.DataFrame:
    """Columns with hard ends: ages clipped at 18 (1.6 % of rows there), a skewed 2-decimal amount, tenures
    clipped at 0 with 1 decimal."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"plan": rng.choice(["basic", "pro"], rows, p=[0.7, 0.3]),
                         "age": np.clip(rng.normal(38, 10, rows), 18, 90).round().astype(int),
                         "spend": (rng.gamma(2.0, 30.0, rows) + 1).round(2),
                         "tenure": np.clip(rng.normal(3, 1.5, rows), 0, None).round(1)})


@pytest.fixture(scope="module")
def bounded_rows(tmp_path_factory):
    from gan_core.config import TableConfig
    from gan_core.tables.schema import infer_schema
    from gan_core.tables.train import train_table_gan

    torch.set_num_threads(1)
    real = bounded_table()
    cfg = TableConfig(embedding_dim=16, mapping_dim=32, generator_dims=(64, 64), discriminator_dims=(64, 64), pac=5,
                      batch_size=100, steps=60, select_every=0, checkpoint_every=1000, gmm_components=5)
    out = tmp_path_factory.mktemp("bounded") / "model"
    train_table_gan(real, real, infer_schema(real, target="plan"), cfg, out, seed=0)
    return real, sample_rows(load_table_model(out), np.arange(2000))[0]


def test_values_stay_inside_the_training_range_without_piling_up_at_its_ends(bounded_rows):
    real, rows = bounded_rows
    gaps = {}
    for column in ("age", "spend", "tenure"):
        r, f = real[column], rows[column]
        assert f.min() >= r.min() and f.max() <= r.max(), column
        for end in (r.min(), r.max()):
            gaps[f"{column}=={end}"] = abs(np.mean(f == end) - np.mean(r == end))
    # Clipping put 5 % of the amounts on the minimum (real: 0.2 %) and 3 % of tenures on the maximum.
    assert max(gaps.values()) < 0.02, gaps
    assert abs(np.mean(rows["age"] == 18) - np.mean(real["age"] == 18)) < 0.015


def test_each_column_keeps_its_rounding_and_integers_stay_integers(bounded_rows):
    _, rows = bounded_rows
    for column, decimals in (("spend", 2), ("tenure", 1), ("age", 0)):
        values = rows[column].to_numpy(dtype=float)
        assert np.array_equal(np.round(values, decimals), values), column
    assert rows["age"].dtype == np.int64
    assert rows["spend"].round(1).ne(rows["spend"]).mean() > 0.5  # two decimals used, not just one


def test_an_integer_column_with_gaps_in_a_csv_comes_back_as_integers(tmp_path):
    from gan_core.tables.data import load_prepared_table, prepare_table

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"plan": rng.choice(["a", "b"], 120), "visits": rng.integers(0, 400, 120).astype(float)})
    frame.loc[::7, "visits"] = np.nan
    (tmp_path / "t.csv").write_text(frame.to_csv(index=False))
    assert pd.read_csv(tmp_path / "t.csv")["visits"].dtype == np.float64  # what pandas makes of the gaps
    prepare_table(str(tmp_path / "t.csv"), tmp_path / "t.npz", 0.2, 0.2, 0)
    assert str(load_prepared_table(tmp_path / "t.npz").train["visits"].dtype) == "Int64"


def test_a_datetime_override_on_text_that_is_no_date_names_the_value_and_the_fix(tmp_path):
    from gan_core.tables.data import prepare_table
    from gan_core.tables.schema import TableError

    (tmp_path / "t.csv").write_text(customers_csv())
    with pytest.raises(TableError, match=r"^column 'plan': 'basic' is not a date; set prepare\.columns: "
                                         r"\{plan: categorical\} or fix the value$"):
        prepare_table(str(tmp_path / "t.csv"), tmp_path / "t.npz", 0.2, 0.2, 0, columns={"plan": "datetime"})
