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
