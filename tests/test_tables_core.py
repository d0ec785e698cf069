"""The tables library: schema inference, reversible transforms, the row GAN's training, resume and sampling."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from gan_core.config import TableConfig
from gan_core.tables.fidelity import fidelity_score, real_values
from gan_core.tables.model import Conditioner, TableGenerator
from gan_core.tables.sampling import generate_matrix, load_table_model, sample_rows
from gan_core.tables.schema import TableError, TableSchema, infer_schema, read_table
from gan_core.tables.train import train_table_gan
from gan_core.tables.transform import TableTransformer

HOSTILE = ["seed", "d_score", "bill length (mm)", "it's \"quoted\"", "ünïcödé 名前", "a/b\\c", "0", " "]


@pytest.fixture(autouse=True)
def one_thread():
    # Two torch threads on a busy 2-core machine ran a step 5x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(**overrides) -> TableConfig:
    base = dict(embedding_dim=16, mapping_dim=32, generator_dims=(32, 32), discriminator_dims=(32, 32), pac=5,
                batch_size=50, steps=20, select_every=5, select_rows=100, checkpoint_every=10, gmm_components=3)
    return TableConfig(**(base | overrides))


def mixed_frame(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """Every kind, each with missing values, under hostile names."""
    rng = np.random.default_rng(seed)
    gap = lambda: rng.random(n) < 0.15  # noqa: E731
    species = rng.choice(["Adelie", "Gentoo", "Chinstrap"], n, p=[0.5, 0.35, 0.15])
    size = np.where(species == "Gentoo", 50.0, 38.0) + rng.normal(0, 2, n)
    return pd.DataFrame({
        HOSTILE[0]: species,  # categorical, complete (the condition)
        HOSTILE[1]: np.where(gap(), np.nan, size),  # continuous
        HOSTILE[2]: pd.array(np.where(gap(), None, rng.integers(150, 230, n)), dtype="Int64"),  # integer
        HOSTILE[3]: np.where(gap(), None, rng.choice(["x", "y"], n)).astype(object),  # categorical
        HOSTILE[4]: np.where(gap(), None, rng.random(n) < 0.3).astype(object),  # boolean
        HOSTILE[5]: pd.Series(pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D"))
        .where(~gap()),  # datetime
        HOSTILE[6]: rng.integers(2007, 2010, n),  # integer, complete
        HOSTILE[7]: rng.normal(0, 1, n),  # continuous, complete
    })


def same_values(a: pd.Series, b: pd.Series) -> bool:
    if a.dtype.kind == "f":
        return bool(np.allclose(a.fillna(-1e9).to_numpy(), b.fillna(-1e9).to_numpy(), rtol=1e-6, atol=1e-6))
    as_list = lambda s: s.astype(object).where(s.notna(), None).tolist()  # noqa: E731
    return as_list(a) == as_list(b)


# --- schema ------------------------------------------------------------------------------------

def test_infer_schema_kinds_nullability_and_condition():
    schema = infer_schema(mixed_frame(), target=HOSTILE[0])
    assert [(c.kind, c.nullable) for c in schema.columns] == [
        ("categorical", False), ("continuous", True), ("integer", True), ("categorical", True), ("boolean", True),
        ("datetime", True), ("integer", False), ("continuous", False)]
    assert schema.condition == HOSTILE[0]  # the target, being categorical
    assert TableSchema.from_json(json.loads(json.dumps(schema.to_json()))) == schema


def test_infer_schema_overrides_and_errors():
    df = mixed_frame()
    schema = infer_schema(df, overrides={HOSTILE[6]: "categorical"}, target=HOSTILE[1])
    assert schema.column(HOSTILE[6]).kind == "categorical" and schema.condition is None  # continuous target
    with pytest.raises(TableError, match="no column 'nope'"):
        infer_schema(df, overrides={"nope": "integer"})
    with pytest.raises(TableError, match="unknown kind 'float'"):
        infer_schema(df, overrides={HOSTILE[1]: "float"})
    with pytest.raises(TableError, match="prepare.condition: column 'd_score' is continuous"):
        infer_schema(df, condition=HOSTILE[1])


def test_read_table_csv_parquet_folder(tmp_path):
    df = pd.DataFrame({"a b": [1, 2, 3], "ü": ["x", "y", None]})
    df.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "parts").mkdir()
    df.iloc[:2].to_parquet(tmp_path / "parts" / "p0.parquet")
    df.iloc[2:].to_parquet(tmp_path / "parts" / "p1.parquet")
    assert same_values(read_table(tmp_path / "t.csv")["ü"], df["ü"])
    assert read_table(tmp_path / "parts")["a b"].tolist() == [1, 2, 3]
    with pytest.raises(TableError, match="missing.csv: not found"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(TableError, match="t.json: a table source must be"):
        read_table(tmp_path / "t.json")


# --- transform ---------------------------------------------------------------------------------

def test_round_trip_with_missing_values_in_every_kind():
    df = mixed_frame()
    schema = infer_schema(df)
    transformer = TableTransformer.fit(df, schema, max_components=3)
    restored = TableTransformer.from_state(json.loads(json.dumps(transformer.state())))  # JSON only
    x = restored.transform(df)
    assert x.dtype == np.float32 and x.shape == (len(df), restored.width)
    back = restored.inverse(x)
    assert list(back.columns) == list(df.columns)
    assert back.dtypes.tolist() == df.dtypes.tolist()
    for name in df.columns:
        assert same_values(df[name], back[name]), name
    assert {s.activation for s in restored.spans} == {"tanh", "softmax"}
    assert sum(s.width for s in restored.spans) == restored.width


def test_a_category_absent_from_a_batch():
    df = mixed_frame()
    transformer = TableTransformer.fit(df, infer_schema(df), max_components=3)
    part = df[df[HOSTILE[0]] == "Adelie"].head(5)  # no Gentoo, no Chinstrap
    x = transformer.transform(part)
    span = transformer.discrete_spans[0]
    assert x.shape[1] == transformer.width and x[:, span.start:span.start + span.width].sum(axis=0).tolist() == [
        5.0 if c == "Adelie" else 0.0 for c in transformer.columns[0]["categories"]]
    assert transformer.inverse(x)[HOSTILE[0]].tolist() == ["Adelie"] * 5
    unseen = part.assign(**{HOSTILE[3]: "never seen"})  # encodes as the most frequent category
    assert transformer.inverse(transformer.transform(unseen))[HOSTILE[3]].notna().all()


# --- training and sampling ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    df = mixed_frame(120)
    schema = infer_schema(df, target=HOSTILE[0])
    out = tmp_path_factory.mktemp("model")
    history = train_table_gan(df.iloc[:90], df.iloc[90:], schema, tiny_cfg(steps=40, lr=1e-3), out, seed=0)
    return df, schema, out, history


def test_train_writes_a_model_and_history(trained):
    df, schema, out, history = trained
    assert {p.name for p in out.iterdir()} >= {"generator.safetensors", "discriminator.safetensors", "meta.json"}
    assert history["steps"] == 40 and [s["step"] for s in history["selection"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    # Kept: the latest step within select_tolerance of the best score.
    top = max(s["score"] for s in history["selection"])
    [*_, kept] = [s for s in history["selection"] if s["score"] >= top - TableConfig().select_tolerance]
    assert (history["best_step"], history["best_score"]) == (kept["step"], kept["score"])
    assert {"d_loss", "g_loss", "cond_loss"} <= set(history["losses"][0])


def test_sampling_hostile_names_dtypes_and_seeds(trained):
    df, schema, out, _ = trained
    model = load_table_model(out)
    rows, d_score = sample_rows(model, np.arange(30))
    assert list(rows.columns) == HOSTILE and rows.dtypes.tolist() == df.dtypes.tolist()
    assert d_score.dtype == np.float32 and d_score.shape == (30,)
    again, d_again = sample_rows(model, np.arange(25, 35))  # a row regenerates from its seed alone
    pd.testing.assert_frame_equal(rows.iloc[25:].reset_index(drop=True), again.iloc[:5])
    np.testing.assert_allclose(d_score[25:], d_again[:5], rtol=1e-5, atol=1e-5)


def test_condition_values_are_held_exactly(trained):
    _, _, out, _ = trained
    model = load_table_model(out)
    wanted = ["Chinstrap"] * 7 + ["Gentoo"] * 3
    rows, _ = sample_rows(model, np.arange(10), condition_values=wanted)
    assert rows[HOSTILE[0]].tolist() == wanted
    with pytest.raises(TableError, match="'Emperor' is not one of its categories"):
        sample_rows(model, np.arange(1), condition_values=["Emperor"])


def test_a_small_fit_beats_an_untrained_generator(trained):
    df, schema, out, history = trained
    model = load_table_model(out)
    reference = real_values(model.transformer, df.iloc[90:])
    seeds = np.arange(300)

    def score(generator):
        x = generate_matrix(generator, model.conditioner, model.transformer, model.cfg, seeds)
        return fidelity_score(model.transformer, reference, model.transformer.decode(x))["score"]
    torch.manual_seed(0)
    untrained = TableGenerator(model.cfg, model.conditioner.dim, model.transformer.width).eval()
    assert score(model.generator) > score(untrained) + 0.05


def test_conditional_shapes_see_classes_that_lost_their_own_features():
    frame = mixed_frame(400)
    schema = infer_schema(frame, target=HOSTILE[0])
    transformer = TableTransformer.fit(frame, schema, 3, 0)
    real = real_values(transformer, frame)
    # The same rows with the size column shuffled across species: every marginal kept, the classes mixed up.
    shuffled = frame.assign(**{HOSTILE[1]: frame[HOSTILE[1]].sample(frac=1, random_state=0).to_numpy()})
    same, mixed = (fidelity_score(transformer, real, real_values(transformer, f), HOSTILE[0]) for f in (frame, shuffled))
    assert same["conditional"] == same["score"] == 1.0
    assert mixed["shapes"] == 1.0 and mixed["conditional"] < 0.95  # 1 of 7 columns: Gentoo's size is 12 mm off
    assert fidelity_score(transformer, real, real_values(transformer, shuffled))["score"] > mixed["score"]


@pytest.mark.parametrize("tolerance, chosen", [(0.0, [1, 2, 2, 2, 5, 5]), (0.01, [1, 2, 3, 3, 5, 5])])
def test_selection_keeps_the_latest_step_within_the_tolerance(tolerance, chosen):
    from gan_core.tables.train import build_state, select

    cfg = tiny_cfg(select_tolerance=tolerance)
    state = build_state(cfg, 0, 4, seed=0, device="cpu")
    scores = iter([0.50, 0.80, 0.795, 0.70, 0.805, 0.79])

    class Scripted:
        def score(self, *_):
            return {"score": next(scores)}
    kept = []
    for step in range(1, 7):
        state.step = step
        select(state, Scripted(), None, cfg)
        kept.append(state.best_step)
    assert kept == chosen and state.top_score == 0.805


def test_resume_equals_uninterrupted_training(tmp_path):
    df = mixed_frame(60)
    schema = infer_schema(df, target=HOSTILE[0])
    cfg = tiny_cfg(steps=20, checkpoint_every=10)
    whole = train_table_gan(df, df, schema, cfg, tmp_path / "whole", seed=3)
    train_table_gan(df, df, schema, cfg, tmp_path / "split", seed=3, stop_after=10)
    assert json.loads((tmp_path / "split.checkpoint" / "meta.json").read_text())["step"] == 10
    resumed = train_table_gan(df, df, schema, cfg, tmp_path / "split", seed=3, resume=True)
    assert resumed["selection"] == whole["selection"] and resumed["losses"] == whole["losses"]
    for folder, names in (("", ("generator", "discriminator")), (".checkpoint", ("generator", "discriminator", "state"))):
        for name in names:
            a = load_file(str(tmp_path / f"whole{folder}" / f"{name}.safetensors"))
            b = load_file(str(tmp_path / f"split{folder}" / f"{name}.safetensors"))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != "torch_rng"), name


def test_conditioner_samples_rare_categories_by_log_frequency():
    df = pd.DataFrame({"c": ["a"] * 97 + ["b"] * 3, "x": np.arange(100.0)})
    transformer = TableTransformer.fit(df, infer_schema(df), max_components=2)
    conditioner = Conditioner(transformer, "c")
    _, _, category = conditioner.train_batch(np.random.default_rng(0), 4000)
    share_b = (category == 1).mean()
    assert 0.15 < share_b < 0.35  # log(4) / (log(98) + log(4)) = 0.23, not the raw 0.03
