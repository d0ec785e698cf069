"""Generate stage: a model -> Parquet shards (fanned out or not) -> a dataset version in S3 with its card."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

from gan_core.card import CardSources, published_curves, read_curves
from gan_core.checkpoint import write_json_atomic
from gan_core.config import GenerateConfig, Params
from gan_core.images.card import write_card
from gan_core.images.generate import generate_shard, plan_shards, rejection_rule, summarize
from gan_core.images.sampling import load_model, pick_device
from gan_core.kinds import Kind, ShardWriter, kind_of
from gan_core.layout import Layout, default_version
from gan_core.provenance import ModelSource, build_manifest, local_model
from gan_core.publication.publish import publish_dataset
from gan_core.publication.s3 import EXTRA_FOLDER, validate_name, version_uri
from gan_core.rejection import RejectionRule
from gan_core.shards import Quota, ShardResult
from gan_core.tables.card import write_table_card
from gan_core.tables.generate import generate_table_shard, plan_table_shards, summarize_table, table_rejection_rule
from gan_core.tables.sampling import load_table_model


class ImageShards:
    """PNG images with label, seed and d_score (gan_core.images.generate)."""

    def load(self, model_dir: Path, params: Params):
        return load_model(model_dir, pick_device(params.train.device))

    def rule(self, model, cfg: GenerateConfig) -> RejectionRule | None:
        return rejection_rule(model, cfg)

    def plan(self, model, cfg: GenerateConfig) -> list[Quota]:
        return plan_shards(model, cfg)

    def shard(self, model, index: int, quota: Quota, cfg: GenerateConfig, rule: RejectionRule | None,
              out_dir: Path) -> ShardResult:
        return generate_shard(model, index, quota, cfg, rule, out_dir)

    def summarize(self, shards: list[ShardResult], rule: RejectionRule | None, cfg: GenerateConfig,
                  model_dir: Path) -> dict:
        return summarize(shards, rule, cfg)

    def card(self, folder: Path, sources: CardSources) -> list[Path]:
        return write_card(folder, sources)


class TableShards:
    """The user's columns and dtypes plus seed and d_score (gan_core.tables.generate)."""

    def load(self, model_dir: Path, params: Params):
        return load_table_model(model_dir)

    def rule(self, model, cfg: GenerateConfig) -> RejectionRule | None:
        return table_rejection_rule(model, cfg)

    def plan(self, model, cfg: GenerateConfig) -> list[Quota]:
        return plan_table_shards(model, cfg)

    def shard(self, model, index: int, quota: Quota, cfg: GenerateConfig, rule: RejectionRule | None,
              out_dir: Path) -> ShardResult:
        return generate_table_shard(model, index, quota, cfg, rule, out_dir)

    def summarize(self, shards: list[ShardResult], rule: RejectionRule | None, cfg: GenerateConfig,
                  model_dir: Path) -> dict:
        # A table's summary names the condition column's values and the added columns: its model says them.
        return summarize_table(shards, rule, cfg, load_table_model(model_dir))

    def card(self, folder: Path, sources: CardSources) -> list[Path]:
        return write_table_card(folder, sources)


PLUGINS: dict[Kind, ShardWriter] = {"image": ImageShards(), "table": TableShards()}


def sample_overrides(num_samples: int | None, class_counts: dict | None) -> dict[str, object]:
    """Overrides of the output's size: class counts alone also set num_samples (their sum) in place of the file's."""
    if class_counts and num_samples is None:
        num_samples = sum(class_counts.values())
    return {"generate.num_samples": num_samples, "generate.class_counts": class_counts}


def run_generate(params: Params, out_dir: Path, layout: Layout = Layout()) -> dict:
    """Shards into `out_dir` (emptied first) plus what the manifest records about them."""
    planned = plan_generation(params, layout.model(params), out_dir)
    results = [run_shard(params, layout.model(params), index, quota, planned["rule"], out_dir)
               for index, quota in planned["shards"]]
    return summarize_shards(params, results, planned["rule"])


# --- generation fanned out: a plan, one call per shard (any order, any host), a summary ----------

def plan_generation(params: Params, model_dir: Path, out_dir: Path) -> dict:
    """Empty `out_dir`; fit the rejection rule once; list each shard's (index, quota: [(class, rows)])."""
    shutil.rmtree(out_dir, ignore_errors=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # emptied: a mount point itself stays
    plugin = PLUGINS[kind_of(model_dir)]
    model = plugin.load(model_dir, params)
    rule, quotas = plugin.rule(model, params.generate), plugin.plan(model, params.generate)
    return {"rule": asdict(rule) if rule else None,
            "shards": [(i, [list(part) for part in quota]) for i, quota in enumerate(quotas)]}


def run_shard(params: Params, model_dir: Path, index: int, quota: list, rule: dict | None, out_dir: Path) -> dict:
    plugin = PLUGINS[kind_of(model_dir)]
    rule = RejectionRule(**rule) if rule else None
    result = plugin.shard(plugin.load(model_dir, params), index, [tuple(part) for part in quota], params.generate,
                          rule, out_dir)
    # The summary needs the model too (a table's names its condition's values): any host finds it by path.
    return {**asdict(result), "path": str(result.path), "model_dir": str(model_dir)}


def summarize_shards(params: Params, results: list[dict], rule: dict | None) -> dict:
    shards = [ShardResult(**{**{k: v for k, v in r.items() if k != "model_dir"}, "path": Path(r["path"])})
              for r in results]
    rule = RejectionRule(**rule) if rule else None
    model_dir = Path(results[0]["model_dir"])
    return PLUGINS[kind_of(model_dir)].summarize(shards, rule, params.generate, model_dir)


def publishes(params: Params) -> bool:
    """generate.publish: true, false, or auto: when an S3 endpoint is set in this environment."""
    if params.generate.publish == "auto":
        return bool(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))
    return params.generate.publish


def unpublished_note(params: Params, summary: dict) -> str:
    """Where a run that publishes nothing left its shards, and how to publish them (one line)."""
    folder = Path(summary["shard_files"][0]).parent
    why = "no S3 endpoint set" if params.generate.publish == "auto" else "generate.publish is false"
    return (f"{folder}/ (not published: {why}; to publish: configure S3 (`source .ganforge/s3.env` after "
            "`ganforge s3 start`, or set AWS_ENDPOINT_URL and keys), then run `ganforge generate`, or set "
            "generate.publish: true in params.yaml and run `dvc repro`)")


def publication_version(version: str | None) -> str:
    """VERSION checked before any work (a hostile one would otherwise fail only at upload), or the UTC time."""
    return validate_name("version", default_version() if version is None else version)


def run_publish(params: Params, summary: dict, version: str, bucket: str, layout: Layout = Layout(),
                model: ModelSource | None = None, prefix: str = "datasets") -> str:
    model = model or local_model(params, layout)
    manifest = build_manifest(params, summary, version, layout, model)
    shards = [Path(p) for p in summary["shard_files"]]
    # A fetched model's card shows the curves it was published with, never the checkout's plots/.
    curves = published_curves(model.directory) if model.uri else read_curves(layout.plots)
    sources = CardSources(manifest, version_uri(bucket, prefix, params.generate.name, version), shards,
                          layout.prepared(params), model.directory, curves, params.generate.license, params.gate)
    card = PLUGINS[kind_of(model.directory)].card(shards[0].parent / EXTRA_FOLDER, sources)
    uri = publish_dataset(shards, bucket=bucket, name=params.generate.name, version=version,
                          manifest=manifest, prefix=prefix, extra_files=card)
    # Beside the shards, wherever this run wrote them (the DVC out, or a run folder of its own).
    write_json_atomic(shards[0].parent / "_published.json", {"uri": uri, "version": version})
    return uri


def card_uri(dataset_uri: str) -> str:
    """The report page of a published version's card (`ganforge show NAME --version V` fetches it)."""
    return f"{dataset_uri.rstrip('/')}/{EXTRA_FOLDER}/report.html"
