"""Generation: per-seed determinism, the Parquet contract, and rejection sampling's acceptance."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gan_core.images.generate import encode_png, generate_dataset, row_schema
from gan_core.images.pixels import to_unit_range
from gan_core.images.sampling import generate_and_score, load_model, rejection_sample
from gan_core.images.train import train
from gan_core.rejection import RejectionRule, fit_rejection_rule
from gan_core.shards import shard_seeds, shard_sizes
from tests.helpers import prepared_digits, tiny_params


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    train(tiny_params(train__epochs=1), prepared_digits(root), root / "model", progress=False)
    return load_model(root / "model")


def test_shard_sizes():
    assert shard_sizes(120, 50) == [50, 50, 20]
    assert shard_sizes(100, 50) == [50, 50]


def test_rows_follow_the_contract_and_regenerate_from_their_seed(model, tmp_path):
    params = tiny_params()
    summary = generate_dataset(model, params.generate, tmp_path)
    assert summary["sample_count"] == 120 and summary["acceptance_rate"] == 1.0
    table = pq.read_table(tmp_path)
    assert table.schema.equals(row_schema([str(k) for k in range(10)]), check_metadata=True)
    rows = table.to_pylist()
    assert len({r["seed"] for r in rows}) == 120
    assert {r["label"] for r in rows} == set(range(10))
    row = rows[37]
    again = generate_and_score(model, np.array([row["seed"]]))
    assert row["image"]["path"] is None
    png = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
    expected = ((again.images[0, 0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    assert png.shape == (8, 8) and np.array_equal(png, expected)
    assert row["label"] == again.labels[0]
    # d_score is the discriminator's score of the image as published: the decoded PNG.
    decoded = to_unit_range(np.array(png[None, None])).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logit = model.discriminator(decoded, torch.tensor([row["label"]])).item()
    assert row["d_score"] == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-6)


def test_samples_are_scored_and_evaluated_as_their_pngs(model):
    # Evaluation and rejection draw through generate_and_score: its images are the 8-bit ones, exactly.
    batch, _ = rejection_sample(model, None, 7, 60, 25)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in encode_png(batch.images)])
    assert torch.equal(batch.images[:, 0], to_unit_range(pixels))
    with torch.inference_mode():
        logits = model.discriminator(batch.images.contiguous(memory_format=torch.channels_last),
                                     torch.as_tensor(batch.labels))
    np.testing.assert_allclose(batch.logits, logits.numpy(), rtol=1e-5, atol=1e-6)


def test_generation_is_deterministic(model, tmp_path):
    params = tiny_params()
    generate_dataset(model, params.generate, tmp_path / "a")
    generate_dataset(model, params.generate, tmp_path / "b")
    for name in ("part-00000.parquet", "part-00002.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shards_have_disjoint_seed_ranges():
    a, b = shard_seeds(3, 0, 0, 5), shard_seeds(3, 1, 0, 5)
    assert not set(a) & set(b)
    with pytest.raises(ValueError, match="seed space"):
        shard_seeds(3, 0, 2**24 - 2, 5)


def test_rejection_rule_hits_its_target_on_a_known_discriminator():
    # Logits from a standard normal: the rule's acceptance on fresh draws must match the target.
    rng = np.random.default_rng(0)
    for target in (0.2, 0.5, 0.8):
        rule = fit_rejection_rule(rng.normal(size=20000), target)
        fresh = rng.normal(size=20000)
        accepted = rng.random(20000) < rule.accept_probability(fresh)
        assert accepted.mean() == pytest.approx(target, abs=0.02)


def test_per_class_rule_keeps_the_class_mix():
    # Class 1's logits sit 2 higher (a projection D's class term): one global gamma would keep
    # mostly class 1; per-class M and gamma keep each class at the target.
    rng = np.random.default_rng(1)
    labels = np.arange(20000) % 2
    logits = rng.normal(size=20000) + 2.0 * labels
    rule = fit_rejection_rule(logits, 0.3, labels)
    assert len(rule.gamma) == 2
    fresh = rng.normal(size=20000) + 2.0 * labels
    accepted = rng.random(20000) < rule.accept_probability(fresh, labels)
    for k in (0, 1):
        assert accepted[labels == k].mean() == pytest.approx(0.3, abs=0.02)
    global_rule = fit_rejection_rule(logits, 0.3)
    kept = labels[rng.random(20000) < global_rule.accept_probability(fresh)]
    assert (kept == 1).mean() > 0.7


def test_rejection_prefers_high_logits():
    rule = fit_rejection_rule(np.linspace(-3, 3, 1000), 0.3)
    p = rule.accept_probability(np.array([-3.0, 0.0, 3.0]))
    assert p[0] < p[1] < p[2] and p[2] > 0.9


def test_rejection_in_generate_records_its_rate(model, tmp_path):
    params = tiny_params(generate__rejection={"enabled": True, "target_acceptance": 0.4, "burn_in": 400})
    summary = generate_dataset(model, params.generate, tmp_path)
    assert summary["sample_count"] == 120
    assert 0.25 < summary["acceptance_rate"] < 0.6
    assert summary["rejection"]["enabled"] and "gamma" in summary["rejection"]
    # The rate counts the candidates examined until each shard's quota filled, not whole batches.
    rule = RejectionRule(tuple(summary["rejection"]["max_logit"]), tuple(summary["rejection"]["gamma"]))
    examined = 0
    for index, rows in enumerate(shard_sizes(120, params.generate.shard_size)):
        accepted: list[bool] = []
        while sum(accepted) < rows:
            batch = generate_and_score(model, shard_seeds(params.generate.seed, index, len(accepted), 40))
            accepted += list(batch.coins < rule.accept_probability(batch.logits, batch.labels))
        examined += int(np.flatnonzero(accepted)[rows - 1]) + 1
    assert summary["candidates"] == examined and summary["acceptance_rate"] == 120 / examined
    scores = pq.read_table(tmp_path).column("d_score").to_numpy()
    plain = generate_and_score(model, shard_seeds(0, 0, 0, 400)).logits
    assert scores.mean() > (1 / (1 + np.exp(-plain))).mean()


def test_rejection_sample_draws_from_the_plain_stream(model):
    plain, drawn = rejection_sample(model, None, 7, 60, 25)
    assert drawn == 60 and np.array_equal(plain.seeds, shard_seeds(7, 0, 0, 60))
    rule = fit_rejection_rule(generate_and_score(model, shard_seeds(7, 5, 0, 400)).logits, 0.5)
    kept, candidates = rejection_sample(model, rule, 7, 60, 25)
    # Exactly the seeds of the plain stream whose coin falls below their acceptance probability.
    stream = generate_and_score(model, shard_seeds(7, 0, 0, candidates))
    expected = stream.seeds[stream.coins < rule.accept_probability(stream.logits)]
    assert np.array_equal(kept.seeds, expected) and kept.seeds[-1] == stream.seeds[-1]
    assert 0.3 < 60 / candidates < 0.7
    # Handed the plain samples, it judges them instead of generating them again: the same samples.
    again, again_candidates = rejection_sample(model, rule, 7, 60, 25, drawn_before=plain)
    assert again_candidates == candidates and np.array_equal(again.seeds, kept.seeds)
    # Generated in other batches: equal up to float rounding on another CPU (a pixel may round the other way).
    assert torch.allclose(again.images, kept.images, atol=1 / 127.5 + 1e-6)
    assert np.allclose(again.logits, kept.logits, atol=1e-4)
    with pytest.raises(ValueError, match="drawn_before"):
        rejection_sample(model, rule, 8, 60, 25, drawn_before=plain)


@pytest.mark.parametrize("logit, expected", [
    # F = d - M - log(1 - exp(d - M - eps)) - gamma with M = 2, gamma = 0.5, eps = 1e-6, evaluated with
    # mpmath at 40 digits. Logits above M are clipped to M (F at its largest, about log(1 / eps)).
    (0.0, -2.354586698648693185),
    (-30.0, -32.49999999999998734),
    (2.0, 13.31551105796423244),
    (5.0, 13.31551105796423244),
    (2.0 - 1e-9, 13.31451155704849107),  # D(x) just below M: 1 - exp(.) is ~1e-6, where rounding bites
    (2.0 - 1e-6, 12.62236337744529549),
])
def test_rejection_logit_matches_the_paper_to_float_precision(logit, expected):
    from gan_core.rejection import RejectionRule

    rule = RejectionRule(max_logit=(2.0,), gamma=(0.5,), eps=1e-6)
    assert rule.shifted(np.array([logit]))[0] == pytest.approx(expected, rel=1e-14)
    assert rule.accept_probability(np.array([logit]))[0] == pytest.approx(1 / (1 + np.exp(-expected)), rel=1e-14)
