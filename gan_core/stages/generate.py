"""Generate stage: a model -> Parquet shards (fanned out or not) -> a dataset version in S3 with its card."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path


from gan_core.card import CardSources, published_curves, read_curves
from gan_core.checkpoint import write_json_atomic
from gan_core.config import Params
from gan_core.images.card import write_card
from gan_core.images.generate import generate_dataset, generate_shard, plan_shards, rejection_rule, summarize
from gan_core.images.sampling import load_model, pick_device
from gan_core.layout import Layout, default_version
from gan_core.provenance import ModelSource, build_manifest, local_model, model_kind
from gan_core.publication.publish import publish_dataset
from gan_core.publication.s3 import EXTRA_FOLDER, validate_name, version_uri
from gan_core.rejection import RejectionRule
from gan_core.shards import ShardResult
from gan_core.tables.card import write_table_card
from gan_core.tables.generate import (
    generate_table_dataset,
    generate_table_shard,
    plan_table_shards,
    summarize_table,
    table_rejection_rule,
)
from gan_core.tables.sampling import load_table_model


def sample_overrides(num_samples: int | None, class_counts: dict | None) -> dict[str, object]:
    """Overrides of the output's size: class counts alone also set num_samples (their sum) in place of the file's."""
    if class_counts and num_samples is None:
        num_samples = sum(class_counts.values())
    return {"generate.num_samples": num_samples, "generate.class_counts": class_counts}


def run_generate(params: Params, out_dir: Path, layout: Layout = Layout()) -> dict:
    """Shards into `out_dir` (emptied first) plus what the manifest records about them."""
    shutil.rmtree(out_dir, ignore_errors=True)
    if model_kind(layout.model(params)) == "table":
        return generate_table_dataset(load_table_model(layout.model(params)), params.generate, out_dir)
    model = load_model(layout.model(params), pick_device(params.train.device))
    return generate_dataset(model, params.generate, out_dir)


# --- generation fanned out: a plan, one call per shard (any order, any host), a summary ----------

def plan_generation(params: Params, model_dir: Path, out_dir: Path) -> dict:
    """Empty `out_dir`; fit the rejection rule once; list each shard's (index, quota: [(class, rows)])."""
    cfg = params.generate
    shutil.rmtree(out_dir, ignore_errors=True)
    Path(out_dir).mkdir(parents=True)
    if model_kind(model_dir) == "table":
        model = load_table_model(model_dir)
        rule, quotas = table_rejection_rule(model, cfg), plan_table_shards(model, cfg)
    else:
        model = load_model(model_dir, pick_device(params.train.device))
        rule, quotas = rejection_rule(model, cfg), plan_shards(model, cfg)
    return {"rule": asdict(rule) if rule else None,
            "shards": [(i, [list(part) for part in quota]) for i, quota in enumerate(quotas)]}


def run_shard(params: Params, model_dir: Path, index: int, quota: list, rule: dict | None, out_dir: Path) -> dict:
    rule = RejectionRule(**rule) if rule else None
    if model_kind(model_dir) == "table":
        result = generate_table_shard(load_table_model(model_dir), index, quota, params.generate, rule, out_dir)
        # The summary of a table's shards needs its model (the condition column's values, the added columns).
        return {**asdict(result), "path": str(result.path), "table_model": str(model_dir)}
    model = load_model(model_dir, pick_device(params.train.device))
    result = generate_shard(model, index, quota, params.generate, rule, out_dir)
    return {**asdict(result), "path": str(result.path)}


def summarize_shards(params: Params, results: list[dict], rule: dict | None) -> dict:
    table_model = results[0].get("table_model") if results else None
    shards = [ShardResult(**{**{k: v for k, v in r.items() if k != "table_model"}, "path": Path(r["path"])})
              for r in results]
    rule = RejectionRule(**rule) if rule else None
    if table_model:
        return summarize_table(shards, rule, params.generate, load_table_model(Path(table_model)))
    return summarize(shards, rule, params.generate)


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
    write = write_table_card if summary.get("kind") == "table" else write_card
    card = write(shards[0].parent / EXTRA_FOLDER, sources)
    uri = publish_dataset(shards, bucket=bucket, name=params.generate.name, version=version,
                          manifest=manifest, prefix=prefix, extra_files=card)
    # Beside the shards, wherever this run wrote them (the DVC out, or a run folder of its own).
    write_json_atomic(shards[0].parent / "_published.json", {"uri": uri, "version": version})
    return uri


def card_uri(dataset_uri: str) -> str:
    """The report page of a published version's card (`ganforge show NAME --version V` fetches it)."""
    return f"{dataset_uri.rstrip('/')}/{EXTRA_FOLDER}/report.html"
