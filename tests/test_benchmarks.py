"""Every benchmark suite runs: `python -m benchmarks --quick` on each `make test`, so a change that breaks one
fails here instead of in the next person's `make bench`."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.__main__ import SUITE_HEADER, SUITES, run_suite
from benchmarks.dcgan import NZ, Dcgan
from tests.helpers import ROOT

BENCH_LINE = re.compile(r"^bench: (?P<name>\w+) value=(?P<value>\S+) goal(>=|<=)(?P<goal>\S+)")


def suite_sections(stdout: str) -> dict[str, list[str]]:
    """Each suite's output lines, keyed by the suite named in the `== suite NAME` line before them."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith(SUITE_HEADER):
            current = line.removeprefix(SUITE_HEADER).strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return sections


def bench_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "DVC_"))}
    return env | {"PATH": f"{os.path.dirname(sys.executable)}:{env['PATH']}", "PYTHONPATH": str(ROOT),
                  "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_HOME": str(tmp_path / "prefect"),
                  "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
                  "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials")}


@pytest.mark.slow
def test_every_suite_prints_its_figures_in_quick_mode(tmp_path):
    scratch = tmp_path / "tmp"  # the suites' temporary files, which must be gone when they end
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT,
                          env=bench_env(tmp_path) | {"TMPDIR": str(scratch),
                                                     "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")},
                          capture_output=True, text=True, timeout=900)
    output = f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    sections = suite_sections(done.stdout)
    for suite in SUITES:
        lines = [m for m in map(BENCH_LINE.match, sections.get(suite, [])) if m]
        assert lines, f"benchmark suite {suite!r} printed no bench: line\n{output}"
        for m in lines:  # a number, or inf / nan where a figure says a contender never got there
            float(m["value"]), float(m["goal"])
    assert done.returncode == 0, output
    assert not list(scratch.iterdir()), f"left behind in the temporary folder: {sorted(scratch.iterdir())}"
    names = [m["name"] for lines in sections.values() for m in map(BENCH_LINE.match, lines) if m]
    assert len(names) == len(set(names)), f"a figure printed twice: {names}"
    # The honest figures: time to the same validation score, MFU against the peak of the precision used.
    assert "tabular_time_to_quality_vs_ctgan_penguins" in names and "train_mfu" in names
    assert {f"quality{kind}_vs_dcgan_fashion_{budget}" for kind in ("", "_precision", "_recall")
            for budget in (1500, 6000)} <= set(names)
    assert not any(name.startswith("tabular_train_time_vs_ctgan") for name in names)
    assert math.isfinite(float(next(m["value"] for m in map(BENCH_LINE.match, sections["training"])
                                    if m and m["name"] == "train_mfu")))


def test_a_suite_that_raises_is_reported_as_failed(capsys):
    assert not run_suite("no_such_suite", {})
    assert "suite no_such_suite: FAILED" in capsys.readouterr().out


def test_dcgan_samples_do_not_depend_on_their_batch():
    # Scored in eval mode with BatchNorm statistics recomputed for the EMA weights: a sample is the same alone
    # or among others, and the networks have the recipe's shapes at 32x32.
    gan = Dcgan(32, 1, 10, seed=0)
    real, labels = torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8)
    stats = gan.step(real, labels)
    assert gan.steps == 1 and all(math.isfinite(v) for v in stats.values())
    assert gan.D(real, labels).shape == (8,)
    generator = gan.standing_statistics(seed=0)
    z = torch.randn(8, NZ, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batch, alone = generator(z, labels), generator(z[:1], labels[:1])
    assert batch.shape == (8, 1, 32, 32) and batch.abs().max() <= 1
    torch.testing.assert_close(alone, batch[:1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_quality_keeps_the_samples_it_scored(tmp_path, capsys):
    from benchmarks import quality
    from gan_core.images.data import load_prepared

    quality.run(quick=True, budgets=(1500,), keep=tmp_path / "kept")
    printed = dict(re.findall(r"1500 CPU-s, (\w+): FD (\d+\.\d+)", capsys.readouterr().out))
    kept = {path.name: path for path in (tmp_path / "kept").iterdir()}
    assert sorted(kept) == ["dcgan-1500-0.npz", "ganforge-1500-0.npz"]
    # Scored again, the kept files give the distances the suite printed: they are the samples it scored.
    samples = quality.QUICK["samples_per_class"] * 10  # the digits' classes
    ref = quality.reference(load_prepared(quality.prepare(tmp_path, quick=True)), samples, quick=True)
    for name in quality.CONTENDERS:
        assert f"{quality.score(kept[f'{name}-1500-0.npz'], ref)['fd']:.3f}" == printed[name]


def test_bench_breakdown_splits_the_distance_and_counts_ink_outside_the_real_area(tmp_path):
    from benchmarks import quality
    from gan_core.images.data import load_prepared
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_breakdown
    from gan_core.images import metrics as m

    data = load_prepared(quality.prepare(tmp_path, quick=True))
    ref = quality.reference(data, len(data.test.labels), quick=True)
    images, labels = data.test.images.copy(), data.test.labels
    blank = m.blank_pixels(bench_breakdown.rows(data.train.images))
    same = bench_breakdown.breakdown(images, labels, ref, data, blank)
    assert same["stray"] == 0 and same["fd"] < 1e-6 and same["mean_term"] < 1e-9  # the test split against itself
    assert same["consistency"] == pytest.approx(np.mean(same["class_consistency"]), abs=0.05)
    assert (data.train.images[:, :, 0, 0] <= 20).all()  # the digits' top-left pixel is always blank
    images[::4, :, 0, 0] = 255  # a quarter of the samples ink it
    inked = bench_breakdown.breakdown(images, labels, ref, data, blank)
    assert inked["stray"] == pytest.approx(len(images[::4]) / len(images))
    assert inked["fd"] > 0 and inked["mean_term"] > 0
