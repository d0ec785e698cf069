"""The table evaluators (gan_core.tables.evaluate) on a real table and on hostile ones, and the benchmark's
CTGAN baseline wrapper."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gan_core.tables.evaluate import evaluate_table, gower_nearest, marginal_file_names
from gan_core.tables.schema import TableError, infer_schema

HOSTILE = ["seed", "d_score", "bill length (mm)", "it's \"quoted\"", "ünïcödé 名前", "a/b\\c", "0", " "]


@pytest.fixture(scope="module")
def penguins():
    """The Palmer penguins (344 rows, missing values in five columns): 200 training rows, the rest test."""
    from palmerpenguins import load_penguins
    frame = load_penguins()
    order = np.random.default_rng(0).permutation(len(frame))
    return frame.iloc[order[:200]].reset_index(drop=True), frame.iloc[order[200:]].reset_index(drop=True), \
        infer_schema(frame, target="species")


def independent_columns(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Each column shuffled on its own: every marginal exact, every dependence between columns gone."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({name: frame[name].to_numpy()[rng.permutation(len(frame))] for name in frame.columns})


@pytest.fixture(scope="module")
def copy_metrics(penguins):
    """The training rows themselves as the synthetic rows: a generator that copies."""
    train, test, schema = penguins
    return evaluate_table(train, test, train, schema, evaluators=["quality", "dcr", "utility", "detection"])


def test_copies_score_perfect_fidelity_and_zero_distance(copy_metrics):
    m = copy_metrics
    assert m["quality"] == pytest.approx(m["quality_floor"])  # the synthetic rows ARE the training rows
    assert m["dcr_copies"] == 1.0 and m["dcr_median"] == 0.0 and m["dcr_ratio"] == 0.0
    assert m["dcr_copies_holdout"] == 0.0 and 0 < m["dcr_p5_holdout"] < m["dcr_median_holdout"] < 0.2
    assert m["utility"] == pytest.approx(1.0)
    assert m["utility_f1_macro_real"] > 0.9  # species from bill, flipper, mass and island: easy for real rows


def test_independent_columns_lose_pair_trends_utility_and_fool_no_classifier(penguins, copy_metrics):
    train, test, schema = penguins
    copy = copy_metrics
    shuffled = evaluate_table(train, test, independent_columns(train), schema,
                              evaluators=["quality", "utility", "detection", "dcr"])
    assert shuffled["column_shapes"] == pytest.approx(copy["column_shapes"])  # same marginals exactly
    assert shuffled["column_pair_trends"] < copy["column_pair_trends"] - 0.05
    assert shuffled["utility"] < 0.6
    assert shuffled["detection_auc"] > 0.8 and copy["detection_auc"] < 0.7
    assert shuffled["dcr_ratio"] > 2  # new rows, far from any real one


def test_gower_distances_by_hand():
    # two numeric columns (range 10 and 1) and one categorical; NaN numbers and code -1 are missing
    reference = (np.array([[0.0, 0.0], [10.0, np.nan]]), np.array([[0], [1]]))
    queries = (np.array([[5.0, 0.5], [10.0, np.nan], [np.nan, 1.0]]), np.array([[0], [1], [-1]]))
    got = gower_nearest(queries, reference, ranges=np.array([10.0, 1.0]))
    # row 0: to ref 0 (0.5 + 0.5 + 0) / 3; row 1: equals ref 1; row 2: to ref 0 (1 + 1 + 1) / 3, ref 1 (1 + 1 + 1) / 3
    np.testing.assert_allclose(got, [1 / 3, 0.0, 1.0])
    np.testing.assert_array_equal(gower_nearest(queries, reference, np.array([10.0, 1.0]), block_cells=1), got)


def hostile_frame(n: int, seed: int) -> pd.DataFrame:
    """Every kind under a hostile name, each with missing values but the first and the last two."""
    rng = np.random.default_rng(seed)
    gap = lambda: rng.random(n) < 0.15
    group = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    return pd.DataFrame({
        HOSTILE[0]: group,
        HOSTILE[1]: np.where(gap(), np.nan, np.where(group == "a", 5.0, -5.0) + rng.normal(0, 1, n)),
        HOSTILE[2]: pd.array(np.where(gap(), None, rng.integers(150, 230, n)), dtype="Int64"),
        HOSTILE[3]: np.where(gap(), None, rng.choice(["x", "y"], n)).astype(object),
        HOSTILE[4]: np.where(gap(), None, rng.random(n) < 0.3).astype(object),
        HOSTILE[5]: pd.Series(pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D"))
        .where(~gap()),
        HOSTILE[6]: rng.integers(2007, 2010, n),
        HOSTILE[7]: rng.normal(0, 1, n),
    })


def test_every_kind_with_missing_values_under_hostile_names(tmp_path):
    train, test, synthetic = hostile_frame(120, 0), hostile_frame(60, 1), hostile_frame(150, 2)
    schema = infer_schema(train, target=HOSTILE[0])
    assert [c.kind for c in schema.columns] == ["categorical", "continuous", "integer", "categorical", "boolean",
                                                "datetime", "integer", "continuous"]
    (tmp_path / "marginals").mkdir()
    (tmp_path / "marginals" / "stale.csv").write_text("old\n")  # a column since renamed: no plot of it stays
    m = evaluate_table(train, test, synthetic, schema, plots_dir=tmp_path, seed=3)
    assert "skipped_evaluators" not in m
    for key in ("quality", "column_shapes", "column_pair_trends", "quality_floor", "diagnostic",
                "diagnostic_validity", "utility", "dcr_ratio", "dcr_p5_ratio", "detection_auc"):
        assert math.isfinite(m[key]) and m[key] >= 0, key
    # drawn from one distribution: a tiny test split's noise, not a generator's faults
    assert 0.6 < m["dcr_ratio"] < 1.6 and m["detection_auc"] < 0.75 and m["utility"] > 0.7
    files = sorted((tmp_path / "marginals").iterdir())
    assert [f.name for f in files] == ["00-seed.csv", "01-d_score.csv", "02-bill_length_mm.csv",
                                       "03-it_s_quoted.csv", "04-n_c_d.csv", "05-a_b_c.csv", "06-0.csv", "07.csv"]
    for name, path in zip(HOSTILE, files):
        plot = pd.read_csv(path, keep_default_na=False, dtype={"column": str, "value": str})
        assert list(plot.columns) == ["column", "value", "real", "generated"]
        assert set(plot["column"]) == {name}
        assert plot["real"].sum() == pytest.approx(1, abs=1e-3)
        assert plot["generated"].sum() == pytest.approx(1, abs=1e-3)
        assert (name in (HOSTILE[0], HOSTILE[6], HOSTILE[7])) == ("(missing)" not in set(plot["value"]))
    year = pd.read_csv(files[6], dtype={"value": str})
    assert list(year["value"]) == ["2007", "2008", "2009"]  # few integers: a bar each, in order


def test_numeric_target_regression_and_no_target():
    train, test, synthetic = hostile_frame(120, 0), hostile_frame(60, 1), hostile_frame(150, 2)
    regression = evaluate_table(train, test, synthetic, infer_schema(train, target=HOSTILE[1]),
                                evaluators=["utility"])
    assert set(regression) == {"utility", "utility_r2_synthetic", "utility_r2_real"}
    assert regression["utility_r2_real"] > 0.5  # d_score is +-5 by group: learnable
    none = evaluate_table(train, test, synthetic, infer_schema(train), evaluators=["utility", "dcr"])
    assert none["skipped_evaluators"] == "utility" and "dcr_ratio" in none
    no_plots = evaluate_table(train, test, synthetic, infer_schema(train), evaluators=["marginals"])
    assert no_plots == {"skipped_evaluators": "marginals"}


def test_errors_name_the_column_or_evaluator():
    train = hostile_frame(40, 0)
    schema = infer_schema(train)
    with pytest.raises(TableError, match="synthetic rows lack column.*ünïcödé"):
        evaluate_table(train, train, train.drop(columns=[HOSTILE[4]]), schema, evaluators=["dcr"])
    with pytest.raises(ValueError, match="unknown \\['fd'\\]"):
        evaluate_table(train, train, train, schema, evaluators=["fd"])


def test_marginal_file_names_are_safe_and_distinct():
    names = marginal_file_names(["a b", "a_b", "", "../x", "é" * 3, "x" * 100])
    assert len(set(names)) == len(names)
    assert names[:4] == ["00-a_b.csv", "01-a_b.csv", "02.csv", "03-x.csv"] and names[4] == "04.csv"
    assert all("/" not in n and len(n) < 50 for n in names)


def test_ctgan_baseline_keeps_columns_dtypes_and_ranges(penguins):
    """The benchmark's CTGAN, wrapped as SDV wraps it: missing numbers through an indicator, values clipped
    and rounded as the training rows, dtypes restored (one epoch: the wrapper, not CTGAN's quality)."""
    import torch

    from benchmarks.tables import CtganBaseline

    torch.set_num_threads(1)
    train, _, schema = penguins
    rows = CtganBaseline(schema, epochs=1, seed=0).fit(train).sample(300)
    assert list(rows.columns) == list(train.columns)
    assert rows["year"].dtype == train["year"].dtype and set(rows["year"]) <= set(train["year"])
    for name in ("bill_length_mm", "body_mass_g"):
        values = rows[name].dropna()
        assert values.between(train[name].min(), train[name].max()).all()
        assert np.allclose(values * 10, (values * 10).round())  # one decimal at most, as the real ones
