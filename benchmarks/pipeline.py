"""Pipeline overhead: the fixed cost of `dvc repro` and Prefect per stage against the stages' own work.

The fixed cost does not depend on the config, the work does; the default config's training alone
takes minutes. So the fixed cost is measured on a tiny config, as `make run` runs it (one local
Prefect server, scripts/local_prefect.sh; `dvc repro` of all stages into a real SeaweedFS), minus
that config's own work timed in-process; and the default config's work is measured stage by stage
in-process, training projected from its measured step rate (all of its steps cost the same).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.harness import info, rates, report
from benchmarks.training import ganforge_step, sync_for
from gan_core.config import Params, parse_params
from gan_core.fingerprint import data_fingerprint, training_fingerprint
from gan_core.images.data import load_prepared
from gan_core.images.models import DataShape
from gan_core.images.train import build_state, export_model, pick_device, set_threads
from gan_core.layout import Layout
from gan_core.s3server import SeaweedServer
from gan_core.stages.evaluate import run_evaluate
from gan_core.stages.generate import run_generate, run_publish
from gan_core.stages.prepare import run_prepare
from gan_core.stages.train import run_train
from tests.helpers import git_commit, make_project, tiny_project_params
from tests.helpers import run as run_cmd

STAGES = ("prepare", "train", "evaluate", "generate")


def project_env(server: SeaweedServer, home: Path) -> dict:
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "DVC_"))}
    return env | server.env() | {
        "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home / "prefect"),
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"), "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
        "AWS_CONFIG_FILE": str(home / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-creds"),
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
    }


# As scripts/run.sh runs `dvc repro`; then (not in quick mode) one stage's process again with that server
# and without it, when it starts the project's local server first, for context. Each step prints when it ended.
REPRO = """
date +%s.%N
source scripts/local_prefect.sh && start_local_prefect_server && date +%s.%N
dvc repro {stages} >/dev/null && date +%s.%N
"""
ONE_STAGE = """
python -m flows.prepare >/dev/null 2>&1 && date +%s.%N
env -u PREFECT_API_URL PREFECT_HOME=.ganforge/ephemeral-home PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \
  python -m flows.prepare >/dev/null 2>&1 && date +%s.%N
"""


def repro_seconds(project: Path, env: dict, stages: tuple[str, ...], one_stage: bool = True) -> dict[str, float]:
    """Seconds of: the Prefect server's start, `dvc repro` of `stages` after it, one stage with it, one without."""
    script = REPRO.format(stages=" ".join(stages)) + (ONE_STAGE if one_stage else "")
    stamps = [float(t) for t in run_cmd(["bash", "-c", script], project, env).stdout.split()]
    return dict(zip(("server_start", "repro", "stage_with_server", "stage_ephemeral"),
                    (b - a for a, b in zip(stamps, stamps[1:]))))


def stage_work_seconds(params: Params, layout: Layout, bucket: str) -> dict[str, float]:
    """Each stage's own work, in this warm process: what a stage process does besides starting up."""
    seconds = {}
    for stage, work in (("prepare", lambda: run_prepare(params, layout)),
                        ("train", lambda: run_train(params, layout, progress=False)),
                        ("evaluate", lambda: run_evaluate(params, layout)),
                        ("generate", lambda: _generate_and_publish(params, layout, bucket))):
        started = time.perf_counter()
        work()
        seconds[stage] = time.perf_counter() - started
    return seconds


def _generate_and_publish(params: Params, layout: Layout, bucket: str) -> None:
    summary = run_generate(params, layout.generated(params), layout)
    run_publish(params, summary, f"bench-{secrets.token_hex(4)}", bucket, layout)


def default_work_seconds(layout: Layout, bucket: str) -> dict[str, float]:
    """The default config's work per stage; training = its step count / its measured step rate."""
    params = Params()
    set_threads(params.train.threads)
    run_prepare(params, layout)
    data = load_prepared(layout.prepared(params)).train
    total_steps = params.train.epochs * (len(data.labels) // params.train.batch_size)
    device = pick_device(params.train.device)
    step_rate = rates({"train": ganforge_step(params, data, device)}, rounds=3, seconds=3,
                      sync=sync_for(device))["train"].wall
    shape = DataShape(data.resolution, data.channels, data.num_classes)
    # Evaluation and generation cost the same for any weights: export untrained ones.
    # The fingerprint of this data: evaluation refuses a model without it.
    fingerprint = training_fingerprint(params, data_fingerprint(layout.prepared(params)))
    export_model(layout.model(params), params, shape, build_state(params, shape, device), {"fingerprint": fingerprint})
    work = {}
    for stage, call in (("prepare", lambda: run_prepare(params, layout)),
                        ("evaluate", lambda: run_evaluate(params, layout)),
                        ("generate", lambda: _generate_and_publish(params, layout, bucket))):
        started = time.perf_counter()
        call()
        work[stage] = time.perf_counter() - started
    work["train"] = total_steps / step_rate
    info(f"default config: {total_steps} training steps at {step_rate:.1f} steps/s (projected "
         f"{work['train']:.0f} s); prepare {work['prepare']:.1f} s, evaluate {work['evaluate']:.1f} s, "
         f"generate+publish {work['generate']:.1f} s (measured)")
    return work


def run(rounds: int = 3, quick: bool = False) -> list[str]:
    """quick: `dvc repro prepare` alone, the tiny config's own work standing for the default config's, and no
    single-stage runs: the same code, with one stage process instead of four."""
    stages = STAGES[:1] if quick else STAGES
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-pipeline-") as tmp:
        tmp = Path(tmp)
        server = SeaweedServer(data_dir=tmp / "seaweedfs", bucket="bench", access_key="BENCH" + secrets.token_hex(6),
                               secret_key=secrets.token_hex(20)).start()
        try:
            env = project_env(server, tmp / "home")
            project = tmp / "tiny"
            project.mkdir()
            make_project(project, tiny_project_params("bench-pipeline"))
            run_cmd(["git", "init", "-q"], project, env)
            git_commit(project, env, "init")
            try:
                timed = repro_seconds(project, env, stages, one_stage=not quick)
            finally:  # the stage run without PREFECT_API_URL started the project's local server: `make stop`'s way
                run_cmd(["bash", "scripts/stop.sh"], project, env)
            os.environ.update(env)  # the in-process stages publish to the same S3
            tiny = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
            tiny_work = stage_work_seconds(tiny, Layout(project), server.bucket)
            default_work = tiny_work if quick else default_work_seconds(Layout(tmp / "default"), server.bucket)
        finally:
            server.stop(timeout=3)  # throwaway data: no need to wait ~14 s for weed's clean shutdown
    work = sum(tiny_work[stage] for stage in stages)
    fixed = timed["server_start"] + timed["repro"] - work
    info(f"tiny config: Prefect server start {timed['server_start']:.1f} s, then dvc repro of {len(stages)} stage(s) "
         f"{timed['repro']:.1f} s, their own work {work:.1f} s: fixed cost {fixed:.1f} s, "
         f"{(fixed - timed['server_start']) / len(stages):.1f} s per stage after the server's start")
    if not quick:
        info(f"one stage process (prepare): {timed['stage_with_server']:.1f} s with the local server, "
             f"{timed['stage_ephemeral']:.1f} s when it starts the project's local server first (no PREFECT_API_URL)")
    # Per `make run`: the server's start and every stage's fixed cost (in quick mode from the one stage timed).
    per_run = timed["server_start"] + (fixed - timed["server_start"]) / len(stages) * len(STAGES)
    return [report("pipeline_overhead", per_run / (per_run + sum(default_work.values())), 0.10,
                   higher_is_better=False)]


if __name__ == "__main__":
    run()
