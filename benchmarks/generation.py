"""Generation figures: the whole generate-and-publish path against the generator alone, publishing
against the AWS CLI, and peak memory at 1,000,000 against 100,000 samples."""

from __future__ import annotations

import itertools
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.harness import info, rates, report
from benchmarks.training import sync_for
from gan_core.config import GenerateConfig, ModelConfig, Params
from gan_core.images.generate import generate_dataset, row_schema
from gan_core.images.models import DataShape
from gan_core.images.sampling import TrainedModel, load_model
from gan_core.images.train import build_state, export_model, pick_device, set_threads
from gan_core.publication.publish import publish_dataset
from gan_core.s3server import SeaweedServer

DIGITS = DataShape(8, 1, 10)
TINY_MODEL = ModelConfig(latent_dim=8, mapping_dim=16, g_channels=16, d_channels=8, d_hidden=16)
PUBLISH_FILES, PUBLISH_FILE_MB = 4, 32
MEMORY_SAMPLES = (100_000, 1_000_000)
# A check that the suite runs, not figures: a tiny model, few samples, small files.
QUICK = {"rounds": 1, "num_samples": 1000, "publish": (2, 1), "memory": (2_000, 20_000)}


def untrained_model(cfg: ModelConfig, folder: Path, shape: DataShape = DIGITS,
                    device: str | torch.device = "cpu") -> TrainedModel:
    """Speed and memory do not depend on what the weights learned. Exported and loaded as the train and
    generate stages do, so the model carries whatever meta.json generation reads."""
    params = Params(model=cfg)
    export_model(folder, params, shape, build_state(params, shape, torch.device("cpu")), {})
    return load_model(folder, device)


def generate_and_publish(model: TrainedModel, cfg: GenerateConfig, work: Path, bucket: str):
    versions = itertools.count()

    def run() -> float:
        out = work / "generated"
        summary = generate_dataset(model, cfg, out)
        publish_dataset([Path(p) for p in summary["shard_files"]], bucket=bucket, name="bench-generate",
                        version=f"v{next(versions)}", manifest={"sample_count": summary["sample_count"]})
        return float(summary["sample_count"])
    return run


def forward_alone(model: TrainedModel, cfg: GenerateConfig):
    """The generator's forward pass on the same number of samples in the same batches; nothing else."""
    z = torch.randn(cfg.batch_size, model.generator.latent_dim, device=model.device)
    labels = torch.arange(cfg.batch_size, device=model.device) % model.shape.num_classes

    @torch.inference_mode()
    def run() -> float:
        for start in range(0, cfg.num_samples, cfg.batch_size):
            model.generator(z[:min(cfg.batch_size, cfg.num_samples - start)], labels)
        return float(cfg.num_samples)
    return run


def generate_vs_forward(work: Path, bucket: str, rounds: int, quick: bool = False) -> str:
    params = Params()
    if quick:
        params = params.model_copy(update={"model": TINY_MODEL, "generate": params.generate.model_copy(
            update={"num_samples": QUICK["num_samples"]})})
    set_threads(0)  # the free cores, for every contender alike (train.threads: 1 is for reproducibility)
    device = pick_device(params.train.device)
    model = untrained_model(params.model, work / "model", device=device)
    cfg = params.generate
    measured = {name: rate.wall for name, rate in rates(
        {"path": generate_and_publish(model, cfg, work, bucket), "forward": forward_alone(model, cfg)},
        rounds=rounds, seconds=0, sync=sync_for(device)).items()}
    info(f"default config ({cfg.num_samples} samples of 8x8, batch {cfg.batch_size}, {device.type}, "
         f"{torch.get_num_threads()} torch threads): generate+publish {measured['path']:.0f} samples/s, G forward alone "
         f"{measured['forward']:.0f} samples/s")
    return report("generate_vs_forward", measured["path"] / measured["forward"], 0.8)


def shard_like_files(folder: Path, count: int = PUBLISH_FILES, megabytes: int = PUBLISH_FILE_MB) -> list[Path]:
    """Parquet files of incompressible image bytes, as large as shards of 32x32 RGB images get."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = megabytes * 2**20 // 3000
    paths = []
    for i in range(count):
        images = [{"bytes": rng.bytes(3000), "path": None} for _ in range(rows)]
        table = pa.table({"image": images, "label": np.zeros(rows, np.int64), "seed": np.arange(rows, dtype=np.int64),
                          "d_score": np.zeros(rows)}, schema=row_schema([]))
        pq.write_table(table, folder / f"part-{i:05d}.parquet", compression="none")
        paths.append(folder / f"part-{i:05d}.parquet")
    return paths


def publish_vs_awscli(work: Path, server: SeaweedServer, rounds: int, count: int = PUBLISH_FILES,
                      megabytes: int = PUBLISH_FILE_MB) -> str:
    files = shard_like_files(work / "upload", count, megabytes)
    size = float(sum(p.stat().st_size for p in files))
    versions = itertools.count()
    aws_config = work / "aws-config"
    aws_config.write_text("[default]\ns3 =\n  addressing_style = path\n")
    env = {**os.environ, **server.env(), "AWS_CONFIG_FILE": str(aws_config),
           "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-credentials")}
    aws = Path(sys.executable).with_name("aws")

    def ours() -> float:
        publish_dataset(files, bucket=server.bucket, name="bench-publish", version=f"v{next(versions)}",
                        manifest={})
        return size

    def awscli() -> float:
        subprocess.run([str(aws), "s3", "cp", "--recursive", "--quiet", str(files[0].parent),
                        f"s3://{server.bucket}/awscli/{next(versions)}/", "--endpoint-url", server.endpoint],
                       env=env, check=True)
        return size

    measured = {name: rate.wall for name, rate in rates({"publish": ours, "awscli": awscli}, rounds=rounds,
                                                         seconds=0).items()}
    info(f"{len(files)} files of {megabytes} MiB: publish {measured['publish'] / 2**20:.0f} MiB/s "
         f"(sha256 of each file and the manifest included), aws s3 cp --recursive "
         f"{measured['awscli'] / 2**20:.0f} MiB/s")
    return report("publish_vs_awscli", measured["publish"] / measured["awscli"], 1.0)


def peak_rss_generating(samples: int, work: Path) -> int:
    """Peak RSS in bytes of a fresh process that generates `samples` (tiny model, default shards)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.generation", "memory", str(samples), str(work)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def generate_memory(work: Path, samples: tuple[int, int] = MEMORY_SAMPLES) -> str:
    # Memory, not time: the two processes run at once.
    results: dict[int, int] = {}
    small, large = samples
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, peak_rss_generating(n, work / str(n))))
               for n in samples]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(results) != 2:
        raise RuntimeError("a generate_memory process failed")
    info(f"peak RSS: {results[large] / 2**20:.0f} MiB at {large:,} samples, "
         f"{results[small] / 2**20:.0f} MiB at {small:,}")
    return report("generate_memory", results[large] / results[small], 1.2, higher_is_better=False)


def _memory_main(samples: int, work: Path) -> None:
    torch.set_num_threads(1)
    cfg = GenerateConfig(num_samples=samples)
    summary = generate_dataset(untrained_model(TINY_MODEL, work / "model"), cfg, work / "generated")
    assert summary["sample_count"] == samples
    print(peak_rss())


def peak_rss() -> int:
    """This process's peak resident set in bytes. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec, so a child of a large benchmark process would report its parent's peak."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def run(rounds: int = 3, quick: bool = False) -> list[str]:
    rounds = QUICK["rounds"] if quick else rounds
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-") as tmp:
        work = Path(tmp)
        server = SeaweedServer(data_dir=work / "seaweedfs", bucket="bench", access_key="BENCH" + secrets.token_hex(6),
                               secret_key=secrets.token_hex(20)).start()
        os.environ.update(server.env() | {"AWS_CONFIG_FILE": str(work / "no-config"),
                                          "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-credentials")})
        try:
            lines = [generate_vs_forward(work, server.bucket, rounds, quick),
                     publish_vs_awscli(work, server, rounds, *(QUICK["publish"] if quick else ()))]
        finally:
            stopping = threading.Thread(target=server.stop)  # SIGTERM takes weed ~14 s: overlap it
            stopping.start()
        lines.append(generate_memory(work / "memory", QUICK["memory"] if quick else MEMORY_SAMPLES))
        stopping.join()
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["memory"]:
        _memory_main(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        run()
