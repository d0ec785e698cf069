"""Training: exact resume, checkpoints that refuse corruption and pickles, the loss log."""

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gan_core import checkpoint as ckpt
from gan_core.fingerprint import LineageError, data_fingerprint, training_fingerprint
from gan_core.images.data import prepare_dataset
from gan_core.images.pixels import to_unit_range
from gan_core.images.sampling import load_model, sample_images
from gan_core.images.train import latest_good_checkpoint, train
from tests.helpers import prepared_digits, tiny_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_digits(tmp_path_factory.mktemp("data"))


def test_resume_ends_with_the_same_weights(prepared, tmp_path):
    # The stop falls inside the learning-rate decay: the resumed run must pick the schedule up, in both of G's
    # parameter groups (train.mapping_lr gives the mapping network its own).
    params = tiny_params(train__epochs=3, train__checkpoint_every=25, train__lr_decay=0.9, train__mapping_lr=0.5)
    straight = train(params, prepared, tmp_path / "straight", progress=False)
    stopped = train(params, prepared, tmp_path / "resumed", checkpoint_dir=tmp_path / "ck",
                    stop_after=25, progress=False)
    assert stopped["steps"] == 25 and not (tmp_path / "resumed").exists()
    resumed = train(params, prepared, tmp_path / "resumed", checkpoint_dir=tmp_path / "ck", resume=True,
                    loss_log=tmp_path / "losses.csv", selection_log=tmp_path / "selection.csv", progress=False)
    assert resumed["steps"] == straight["steps"] == 3 * (1258 // 32)
    # The exported model is the selected one, chosen among evaluations on both sides of the stop.
    assert resumed["selected_step"] == straight["selected_step"] == ckpt.read_meta(tmp_path / "resumed")["step"]
    assert resumed["selected_fd_validation"] == straight["selected_fd_validation"]
    selection = (tmp_path / "selection.csv").read_text().splitlines()
    assert selection[0] == "step,fd_validation"
    assert [int(r.split(",")[0]) for r in selection[1:]] == [20, 40, 60, 80, 100, 117]
    fds = {int(r.split(",")[0]): float(r.split(",")[1]) for r in selection[1:]}
    assert fds[resumed["selected_step"]] == min(fds.values())
    for name in ("generator", "discriminator", "ema"):
        a = load_file(tmp_path / "straight" / f"{name}.safetensors")
        b = load_file(tmp_path / "resumed" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].equal(b[key]), f"{name}.{key} differs after resume"
    rows = (tmp_path / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,d_loss,g_loss,d_real,d_fake"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [20, 40, 60, 80, 100, 117]


def test_corrupt_checkpoint_is_skipped_for_the_previous_good_one(prepared, tmp_path):
    params = tiny_params(train__epochs=1, train__checkpoint_every=10)
    train(params, prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck", stop_after=20, progress=False)
    newest = tmp_path / "ck" / "step-000000020"
    blob = newest / "generator.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-pattern in the middle of the weights
    blob.write_bytes(bytes(data))
    assert latest_good_checkpoint(tmp_path / "ck") == tmp_path / "ck" / "step-000000010"
    with pytest.raises(ckpt.CheckpointError, match="sha256 does not match"):
        ckpt.load_tensors(newest, "generator")


def test_pickle_payload_is_refused_without_fallback(prepared, tmp_path):
    params = tiny_params(train__epochs=1)
    train(params, prepared, tmp_path / "model", progress=False)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    target = tmp_path / "model" / "ema.safetensors"
    target.write_bytes(pickle.dumps(Exploit()))
    meta = ckpt.read_meta(tmp_path / "model")
    meta["files"]["ema.safetensors"] = ckpt.sha256_file(target)  # even with a matching hash
    ckpt.write_json_atomic(tmp_path / "model" / "meta.json", meta)
    with pytest.raises(ckpt.CheckpointError, match="not a safetensors file"):
        ckpt.load_tensors(tmp_path / "model", "ema")
    assert not marker.exists()


def test_learning_rates_fall_linearly_to_zero_over_the_decay_share(prepared, tmp_path):
    from gan_core.images.models import DataShape
    from gan_core.images.train import build_state, set_learning_rates

    params = tiny_params(train__lr_g=4e-4, train__lr_d=2e-4, train__lr_decay=0.5)
    state = build_state(params, DataShape(8, 1, 10), torch.device("cpu"))
    rates = {}
    for step in (0, 50, 60, 80, 99):
        state.step = step
        set_learning_rates(state, params.train, total_steps=100)
        rates[step] = (state.opt_g.param_groups[0]["lr"], state.opt_d.param_groups[0]["lr"])
    assert rates[0] == rates[50] == (4e-4, 2e-4)  # constant until the last half
    assert rates[60] == pytest.approx((3.2e-4, 1.6e-4))  # 40 of the 50 decay steps left
    assert rates[80] == pytest.approx((1.6e-4, 0.8e-4))
    assert rates[99] == pytest.approx((8e-6, 4e-6))  # the last step still moves the weights


def test_resume_refuses_a_checkpoint_of_other_settings_or_data(prepared, tmp_path):
    params = tiny_params(train__epochs=1, train__lr_g=6e-4)  # its own rate, so a new default cannot move the message
    other = tiny_params(train__epochs=1, train__lr_g=4e-4)
    train(params, prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck", stop_after=20, progress=False)
    # A fresh run with other settings: its checkpoints replace the earlier run's, never mix with them.
    train(other, prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck", stop_after=10, progress=False)
    assert latest_good_checkpoint(tmp_path / "ck") == tmp_path / "ck" / "step-000000010"
    with pytest.raises(LineageError, match=r"step-000000010 was trained with train\.lr_g 0\.0004 vs 0\.0006 "
                                           r"\(checkpoint vs now\): delete it or rerun without --resume"):
        train(params, prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck", resume=True, progress=False)
    reshuffled = prepare_dataset("bundled:digits", tmp_path / "seed1.npz", 0.15, 0.15, seed=1)
    assert reshuffled["train"] == 1258
    with pytest.raises(LineageError, match=r"was trained on other data \(sha256 [0-9a-f]{8}\.\. vs [0-9a-f]{8}\.\.\)"):
        train(other, tmp_path / "seed1.npz", tmp_path / "model", checkpoint_dir=tmp_path / "ck", resume=True,
              progress=False)


def test_the_exported_model_comes_from_this_run_even_past_an_old_checkpoint(prepared, tmp_path):
    longer = tiny_params(train__epochs=3, train__select_every=0)
    train(longer, prepared, tmp_path / "old", checkpoint_dir=tmp_path / "ck", progress=False)  # up to step 117
    shorter = tiny_params(train__epochs=1, train__select_every=0)  # 39 steps
    train(shorter, prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck", progress=False)
    assert sorted(p.name for p in (tmp_path / "ck").glob("step-*")) == [
        "step-000000010", "step-000000020", "step-000000030", "step-000000039"]
    exported = ckpt.read_meta(tmp_path / "model")
    assert exported["step"] == 39 and exported["fingerprint"]["train"]["epochs"] == 1
    # Resuming the finished run exports its own last state again, not the longer run's.
    resumed = train(shorter, prepared, tmp_path / "again", checkpoint_dir=tmp_path / "ck", resume=True,
                    progress=False)
    assert resumed["steps"] == 39
    again = ckpt.read_meta(tmp_path / "again")
    assert again["fingerprint"] == exported["fingerprint"]
    assert again["files"]["ema.safetensors"] == exported["files"]["ema.safetensors"]


def test_fingerprint_names_what_changes_the_model(prepared):
    base = training_fingerprint(tiny_params(), data_fingerprint(prepared))
    # Where and how fast a run goes is not what it learns: a checkpoint resumes on another machine.
    assert training_fingerprint(tiny_params(train__threads=2, train__device="cpu", train__checkpoint_every=7),
                                data_fingerprint(prepared)) == base
    for changed in ({"train__select_every": 40}, {"model__latent_dim": 9}, {"prepare__seed": 1},
                    {"features__dim": 8}):
        assert training_fingerprint(tiny_params(**changed), data_fingerprint(prepared))["id"] != base["id"], changed
    assert set(base["data"]["splits"]) == {"train", "validation", "test"}


def test_selection_measures_against_the_validation_split(prepared):
    from gan_core.images.data import load_prepared
    from gan_core.images.models import DataShape
    from gan_core.images.train import build_selector

    data = load_prepared(prepared)
    selector = build_selector(tiny_params(), data, DataShape(8, 1, 10), torch.device("cpu"), None)
    net_features, _ = selector.net.embed(to_unit_range(data.validation.images))
    assert selector.reference.shape[0] == len(data.validation.labels) == 270
    assert (selector.reference == net_features).all()
    # Scored in batches (memory bounded), and the batches change nothing but the peak memory.
    from gan_core.images.models import Generator
    generator = Generator(tiny_params().model, DataShape(8, 1, 10)).eval()
    calls = []

    def counting(z, labels):
        calls.append(len(z))
        return generator(z, labels)

    whole = selector.score(counting, batch_size=len(selector.z))
    batched = selector.score(counting, batch_size=500)
    n = len(selector.z)
    assert calls == [n, 500, 500, n - 1000] and 1000 < n < 1500 and batched == pytest.approx(whole, rel=1e-6)
    # train.select_samples caps the samples (as many as training images otherwise), classes still cycling.
    capped = build_selector(tiny_params(train__select_samples=300), data, DataShape(8, 1, 10), torch.device("cpu"), None)
    assert len(capped.z) == 300 and n == len(data.train.labels)
    assert np.bincount(capped.labels.numpy()).tolist() == [30] * 10
    assert (capped.z == selector.z[:300]).all()  # the first samples of the uncapped selection


def test_a_minibatch_std_discriminator_exports_its_real_spread(prepared, tmp_path):
    params = tiny_params(train__epochs=1, train__checkpoint_every=10, model__minibatch_std=True)
    train(params, prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck", progress=False)
    model = load_model(tmp_path / "model")
    # The running spread of the real batches came through safetensors: rows are scored with it.
    assert (model.discriminator.minibatch_std.real_spread > 0.01).all()
    batched = sample_images(model, class_counts={0: 3, 7: 3}, seed=0)
    one_by_one = sample_images(model, class_counts={0: 3, 7: 3}, seed=0, batch_size=1)
    assert batched.d_scores.shape == (6,) and ((0 < batched.d_scores) & (batched.d_scores < 1)).all()
    np.testing.assert_allclose(batched.d_scores, one_by_one.d_scores, rtol=1e-4)


@pytest.mark.parametrize("reuse_fake, g_forwards", [(False, 2), (True, 1)])
def test_reuse_fake_runs_the_generator_once_a_step(reuse_fake, g_forwards):
    from gan_core.images.models import DataShape
    from gan_core.images.train import build_state, train_step

    params = tiny_params(train__reuse_fake=reuse_fake, train__augment=False)
    state = build_state(params, DataShape(8, 1, 10), torch.device("cpu"))
    calls = []
    state.G.register_forward_hook(lambda module, args, out: calls.append(args[1].clone()))
    d_inputs = []
    state.D.register_forward_hook(lambda module, args, out: d_inputs.append(args[0].detach().clone()))
    real, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    stats = train_step(state, real, labels, params.train)
    assert len(calls) == g_forwards and np.isfinite(stats["train/d_loss"])
    # D judges the real batch, a generated one in its own step, then one in G's step: the same one when reused
    assert len(d_inputs) == 3 and d_inputs[1].equal(d_inputs[2]) == reuse_fake


def test_a_light_model_trains_exports_and_samples(prepared, tmp_path):
    params = tiny_params(model__d_stem=False, model__grow_kernel=1, model__refine=False, train__reuse_fake=True,
                         train__epochs=1)
    train(params, prepared, tmp_path / "model", progress=False)
    model = load_model(tmp_path / "model")
    assert model.generator.decoder[0].grow[0].kernel_size == (1, 1)
    samples = sample_images(model, class_counts={2: 4}, seed=0)
    assert samples.images.shape == (4, 1, 8, 8) and (samples.labels == 2).all()


def test_a_batchnorm_generator_exports_the_statistics_of_its_ema_weights(prepared, tmp_path):
    params = tiny_params(model__g_norm="batch", train__epochs=1, train__select_every=5)
    train(params, prepared, tmp_path / "model", progress=False)
    ema = load_file(tmp_path / "model" / "ema.safetensors")
    # Recomputed for the EMA weights (standing statistics), not left at BatchNorm's initial 0 and 1.
    assert ema["first.0.running_mean"].abs().max() > 0 and not torch.allclose(ema["first.0.running_var"],
                                                                               torch.ones(16))
    model = load_model(tmp_path / "model")
    batched = sample_images(model, class_counts={0: 3, 7: 3}, seed=0)
    one_by_one = sample_images(model, class_counts={0: 3, 7: 3}, seed=0, batch_size=1)
    np.testing.assert_allclose(np.asarray(batched.images, float), np.asarray(one_by_one.images, float), atol=1)


def test_a_batchnorm_discriminator_exports_its_running_statistics_and_scores_rows_alone(prepared, tmp_path):
    params = tiny_params(model__d_norm="batch", train__epochs=1)
    train(params, prepared, tmp_path / "model", progress=False)
    model = load_model(tmp_path / "model")
    norms = [m for m in model.discriminator.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 1 and norms[0].num_batches_tracked > 0 and norms[0].running_mean.abs().max() > 0
    batched = sample_images(model, class_counts={0: 3, 7: 3}, seed=0)
    one_by_one = sample_images(model, class_counts={0: 3, 7: 3}, seed=0, batch_size=1)
    np.testing.assert_allclose(batched.d_scores, one_by_one.d_scores, rtol=1e-4)


def test_the_mapping_network_learns_at_its_own_share_of_the_rate_through_the_schedule():
    from gan_core.images.models import DataShape
    from gan_core.images.train import build_state, set_learning_rates, train_step

    params = tiny_params(train__lr_g=2e-4, train__mapping_lr=0.01, train__lr_decay=1.0, train__augment=False)
    state = build_state(params, DataShape(8, 1, 10), torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in state.G.named_parameters()}
    set_learning_rates(state, params.train, total_steps=4)
    real, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    train_step(state, real, labels, params.train)
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in state.G.named_parameters()}
    # Adam's first step moves each weight by about its rate: 2e-4 for G, 2e-6 for the mapping network's layers
    assert max(v for k, v in moved.items() if k.startswith("mapping.net.")) <= 2.1e-6
    assert max(v for k, v in moved.items() if not k.startswith("mapping.net.")) > 1e-4
    state.step = 3  # the decay scales both groups alike
    set_learning_rates(state, params.train, total_steps=4)
    assert [g["lr"] for g in state.opt_g.param_groups] == pytest.approx([0.25 * 2e-4, 0.25 * 2e-6])


def test_r1_penalty_is_the_squared_input_gradient_and_stays_differentiable():
    from gan_core.images.train import r1_penalty

    weight = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]], requires_grad=True)
    inputs = torch.rand(5, 1, 2, 2, requires_grad=True)
    logits = (inputs * weight).sum((1, 2, 3)) ** 2 / 2  # d logit / d x = (w . x) w, per sample
    expected = ((inputs * weight).sum((1, 2, 3)) ** 2 * weight.square().sum()).mean()
    penalty = r1_penalty(logits, inputs)
    torch.testing.assert_close(penalty, expected)
    # The penalty's own gradient reaches the weights, so D's step can lower it.
    (from_penalty,) = torch.autograd.grad(penalty, weight)
    (from_expected,) = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(from_penalty, from_expected)


def test_lazy_r1_changes_only_the_steps_it_runs_on():
    from gan_core.images.models import DataShape
    from gan_core.images.train import build_state, d_step

    real, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10

    def d_after_one_step(step: int, gamma: float) -> tuple[dict, dict]:
        params = tiny_params(train__r1_gamma=gamma, train__r1_every=4, train__augment=False)
        state = build_state(params, DataShape(8, 1, 10), torch.device("cpu"))
        state.step = step
        stats = d_step(state, real, labels, params.train)
        return stats, {name: p.detach().clone() for name, p in state.D.named_parameters()}

    plain_stats, plain = d_after_one_step(4, 0.0)
    stats, penalised = d_after_one_step(4, 10.0)
    assert "train/r1" not in plain_stats and stats["train/r1"] > 0
    assert max((penalised[k] - plain[k]).abs().max().item() for k in plain) > 1e-6
    stats, between = d_after_one_step(5, 10.0)
    _, plain = d_after_one_step(5, 0.0)
    assert "train/r1" not in stats
    assert all(between[k].equal(plain[k]) for k in plain)


def test_a_run_with_r1_logs_its_penalty_beside_the_losses(prepared, tmp_path):
    import csv

    params = tiny_params(train__r1_gamma=1.0, train__r1_every=2, train__epochs=1)
    train(params, prepared, tmp_path / "model", loss_log=tmp_path / "losses.csv", progress=False)
    with open(tmp_path / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(float(row["r1"]) > 0 and float(row["d_loss"]) > 0 for row in rows)
