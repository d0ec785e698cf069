"""Training: exact resume, checkpoints that refuse corruption and pickles, the loss log."""

import pickle

import pytest
import torch
from safetensors.torch import load_file

from gan_core import checkpoint as ckpt
from gan_core.train import latest_good_checkpoint, train
from tests.helpers import prepared_digits, tiny_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_digits(tmp_path_factory.mktemp("data"))


def test_resume_ends_with_the_same_weights(prepared, tmp_path):
    # The stop falls inside the learning-rate decay: the resumed run must pick the schedule up.
    params = tiny_params(train__epochs=3, train__checkpoint_every=25, train__lr_decay=0.9)
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
    from gan_core.models import DataShape
    from gan_core.train import build_state, set_learning_rates

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
