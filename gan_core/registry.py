"""The model registry on S3: model hand-off (publish, resolve, fetch), which published version is `production`,
the quality gate that moves it, retention.

Layout: s3://BUCKET/models/NAME/VERSION/ (gan_core.publication), plus
  models/NAME/_aliases/production.json           {"version", "uri", "previous": [...], "set_at", "action"}
  models/NAME/_aliases/production-history/*.json  one object per change, never rewritten (an audit log)
The alias is replaced by one PUT of a small JSON (atomic for readers), conditional on the ETag it was read
with (two promotions at once: the later one reads again), and only ever names a complete version. Its
`previous` list is a stack of earlier production versions that `rollback` pops. Retention never deletes the
production version, its `previous` list or a pinned version; promote and retention each check again after
writing (gan_core.publication.retention), so neither can leave the alias naming a deleted version.
`previous` list is a stack of earlier production versions that `rollback` pops.
The gate reads metrics bound to the model they measured (its generator's sha256, recorded by the evaluation):
a model is never promoted, nor a dataset published from it, on another model's numbers.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from gan_core.card import read_curves
from gan_core.checkpoint import read_metrics, sha256_file
from gan_core.config import GateConfig, Params
from gan_core.kinds import GENERATOR_FILE
from gan_core.layout import Layout, model_cache_dir
from gan_core.provenance import ModelSource, generator_file, provenance, training_inputs
from gan_core.publication.publish import publish_model
from gan_core.publication.read import fetch_model, list_datasets, list_versions, read_manifest, version_order
from gan_core.publication.retention import apply_retention
from gan_core.publication.s3 import (
    MANIFEST,
    MODELS_PREFIX,
    StorageError,
    VersionNotFoundError,
    put_if,
    read_object,
    read_object_tagged,
    require_conditional_writes,
    s3_client,
    validate_name,
    version_prefix,
    version_uri,
)
from gan_core.verdict import Check, verdict as judge

PRODUCTION = "production"
ALIASES = "_aliases"  # '_': never a version name (s3.NAME_RE), so listing versions skips it
MAX_PREVIOUS = 50


class GateError(ValueError):
    """A model missed the quality gate: it stays published but does not become production."""


# --- quality gate ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GateResult:
    misses: list[str]  # one readable line per metric that missed or is missing
    checks: tuple[Check, ...] = ()  # every threshold judged; none when the metrics measured another model

    @property
    def passed(self) -> bool:
        return not self.misses

    def markdown(self, name: str, version: str) -> str:
        verdict = "passed: promoted to production" if self.passed else "FAILED: not promoted"
        lines = [f"### quality gate: {name} {version} {verdict}", "", "| metric | value | goal | |", "|---|---|---|---|"]
        lines += [f"| {c.metric} | {c.shown_value} | {c.goal} | {c.status} |" for c in self.checks]
        return "\n".join(lines + [""] + [f"- {miss}" for miss in self.misses])


def check_gate(metrics: dict, gate: GateConfig) -> GateResult:
    """Each threshold of `gate` for the evaluated kind against `metrics` (gan_core.verdict, which the card and the
    evaluate stage's log show); a missing or non-numeric metric misses unless its threshold is null."""
    verdict = judge(metrics, gate)
    return GateResult([_miss(check) for check in verdict.missed], verdict.checks)


def _miss(check: Check) -> str:
    if check.value is None:
        return f"{check.metric} is missing from the evaluation (gate.{check.key}: {check.threshold})"
    beyond = ">" if check.bound == "max" else "<"
    return f"{check.metric} {check.value:.4g} {beyond} {check.threshold} (gate.{check.key})"


def gate_error(name: str, version: str, result: GateResult) -> GateError:
    return GateError(f"model {name} {version} is published but not promoted, the quality gate failed: "
                     f"{'; '.join(result.misses)} (`ganforge models promote {version} --name {name} --force` "
                     f"promotes it anyway)")


# Metrics are bound to the model they measured: the gate never passes a model on another one's evaluation.

def model_identity(model_dir: Path) -> dict:
    """What an evaluation records about the model it measured: its generator's sha256 (the weights generation
    samples from) and the step it was exported at."""
    model_dir = Path(model_dir)
    return {"generator_sha256": sha256_file(model_dir / generator_file(model_dir)),
            "step": read_metrics(model_dir / "meta.json").get("step")}


def published_generator_sha256(manifest: dict) -> str | None:
    """The sha256 a published model's manifest lists for its generator: an image model's ema.safetensors, else a
    table model's generator.safetensors (an image model's generator.safetensors holds the raw, non-EMA G)."""
    files = {entry["key"].rsplit("/", 1)[-1]: entry.get("sha256") for entry in manifest.get("files") or []}
    return files.get(GENERATOR_FILE["image"]) or files.get(GENERATOR_FILE["table"])


def _binding_miss(metrics: dict, model_sha256: str | None) -> str | None:
    """Why METRICS cannot stand for the model whose generator has MODEL_SHA256, or None when they measured it."""
    measured = metrics.get("generator_sha256")
    if model_sha256 is not None and measured == model_sha256:
        return None
    short = [sha[:12] if isinstance(sha, str) else "none recorded" for sha in (measured, model_sha256)]
    return (f"the metrics are not this model's: they measured generator sha256 {short[0]}, this model's is "
            f"{short[1]} (evaluate this model first: `dvc repro evaluate`, or `ganforge evaluate`)")


def check_model_gate(metrics: dict, gate: GateConfig, model_sha256: str | None) -> GateResult:
    """check_gate() of metrics that must have measured the model whose generator has MODEL_SHA256."""
    miss = _binding_miss(metrics, model_sha256)
    return GateResult([miss]) if miss else check_gate(metrics, gate)


def require_measured(metrics: dict, model_dir: Path) -> None:
    """GateError unless METRICS measured the model in MODEL_DIR: a manifest never carries another model's."""
    if miss := _binding_miss(metrics, model_identity(model_dir)["generator_sha256"]):
        raise GateError(f"{model_dir}: {miss}")


def gate_published(bucket: str, name: str, version: str, gate: GateConfig, prefix: str = MODELS_PREFIX,
                   client=None) -> GateResult:
    """The gate on published VERSION: its manifest's metrics, bound to the generator S3 holds."""
    manifest = read_manifest(bucket, name, version, prefix, client)
    return check_model_gate(manifest.get("metrics") or {}, gate, published_generator_sha256(manifest))


def promote_if_passing(bucket: str, name: str, version: str, gate: GateConfig, prefix: str = MODELS_PREFIX,
                       client=None) -> dict:
    """promote() when published VERSION's own metrics pass GATE; otherwise GateError naming what missed."""
    result = gate_published(bucket, name, version, gate, prefix, client)
    if not result.passed:
        raise gate_error(name, version, result)
    return promote(bucket, name, version, prefix, client)


def was_production(bucket: str, name: str, version: str, prefix: str = MODELS_PREFIX, client=None) -> bool:
    """Whether VERSION was ever made production (the alias history names it): its gate ran, or it was forced."""
    client = client or s3_client()
    history = _alias_key(name, prefix=prefix).removesuffix(".json") + "-history/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=history)
    # Each entry is named TIMESTAMP-VERSION.json (TIMESTAMP has no '-'): see _set_production.
    return any(item["Key"].rsplit("/", 1)[-1].split("-", 1)[-1] == f"{version}.json"
               for page in pages for item in page.get("Contents", []))


EXPERIMENTS = "experiments"  # flows.generate publishes `dvc exp run`'s datasets under experiments/EXP/datasets


def check_dataset_model(model: ModelSource, gate: GateConfig, prefix: str) -> None:
    """GateError unless a dataset from MODEL may be published to PREFIX: the production model (the gate moved
    it there, or a person forced it), or a model whose own metrics pass GATE. Experiments are exempt: their
    datasets never become `latest` of datasets/."""
    if prefix.split("/", 1)[0] == EXPERIMENTS:
        return
    if model.uri:
        bucket, model_prefix, name, version = parse_checkpoint(model.uri, "", "")
        alias = read_alias(bucket, name, model_prefix)
        if alias is not None and alias["version"] == version:
            return
    result = check_model_gate(model.metrics, gate, model_identity(model.directory)["generator_sha256"])
    if not result.passed:
        where = model.uri or f"{model.directory} (metrics/eval.json)"
        raise GateError(f"no dataset published: model {where} missed the quality gate: {'; '.join(result.misses)}. "
                        f"Publish from a model that passed (checkpoint production), or keep the shards local "
                        f"(`ganforge generate --no-publish`)")


# --- the production alias -------------------------------------------------------------------

def _alias_key(name: str, alias: str = PRODUCTION, prefix: str = MODELS_PREFIX) -> str:
    return f"{prefix}/{validate_name('name', name)}/{ALIASES}/{alias}.json"


class _AliasChanged(Exception):
    """Another promotion replaced the alias between our read and our write."""


def read_alias(bucket: str, name: str, prefix: str = MODELS_PREFIX, client=None) -> dict | None:
    """The production alias of model NAME, or None when no version was ever promoted."""
    raw = read_object(bucket, _alias_key(name, prefix=prefix), client or s3_client())
    return json.loads(raw) if raw is not None else None


def production_version(bucket: str, name: str, prefix: str = MODELS_PREFIX, client=None) -> str:
    alias = read_alias(bucket, name, prefix, client)
    if alias is None:
        raise VersionNotFoundError(
            f"model '{name}' has no production version (no s3://{bucket}/{_alias_key(name, prefix=prefix)}): "
            f"run training with publish (the train-and-publish/training deployment), or `ganforge models promote VERSION "
            f"--name {name}`")
    return alias["version"]


def _set_production(bucket: str, name: str, version: str, previous: list[str], action: str, prefix: str,
                    client, etag: str | None, before: bytes | None) -> dict:
    """Replace the alias BEFORE, read with ETAG (None: there was none); _AliasChanged if another write came first."""
    read_manifest(bucket, name, version, prefix, client)  # only a complete version: raises otherwise
    now = dt.datetime.now(dt.timezone.utc)
    body = {"name": name, "version": version, "uri": version_uri(bucket, prefix, name, version),
            "previous": previous[-MAX_PREVIOUS:], "action": action, "set_at": now.isoformat(timespec="seconds")}
    text = json.dumps(body, indent=2, sort_keys=True).encode()
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    key = _alias_key(name, prefix=prefix)
    # A retried request whose first attempt succeeded also fails its condition: that write is ours.
    if not put_if(bucket, key, text, client, **condition) and read_object(bucket, key, client) != text:
        raise _AliasChanged()
    if read_object(bucket, f"{version_prefix(prefix, name, version)}/{MANIFEST}", client) is None:
        _undo_swap(bucket, key, text, before, client)  # retention deleted it between our check and our write
        raise VersionNotFoundError(f"model '{name}' version {version} was deleted while being made production; "
                                   "production is unchanged")
    # After the alias, which holds the truth: a crash in between loses an audit entry, never invents one.
    history = _alias_key(name, prefix=prefix).removesuffix(".json") + "-history"
    client.put_object(Bucket=bucket, Key=f"{history}/{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{version}.json", Body=text)
    return body


def _undo_swap(bucket: str, key: str, ours: bytes, before: bytes | None, client) -> None:
    """Put back the alias as it was (BEFORE; None: there was none), unless another promotion replaced ours since."""
    now, etag = read_object_tagged(bucket, key, client)
    if now != ours:
        return
    if before is None:
        client.delete_object(Bucket=bucket, Key=key)
    else:
        put_if(bucket, key, before, client, IfMatch=etag)


def _swap(bucket: str, name: str, prefix: str, client, change) -> dict:
    """Read the alias, change(current alias) -> (version, previous, action), write it back unless another
    promotion came in between; then read again and retry. change() -> None: the alias stays as it is."""
    require_conditional_writes(client, bucket)  # the swap is an If-Match write: last-writer-wins without it
    for _ in range(5):
        raw, etag = read_object_tagged(bucket, _alias_key(name, prefix=prefix), client)
        current = json.loads(raw) if raw is not None else None
        if (proposal := change(current)) is None:
            return current
        try:
            return _set_production(bucket, name, *proposal, prefix, client, etag, raw)
        except _AliasChanged:
            continue
    raise StorageError(f"the production alias of model '{name}' kept changing under this promotion: retry")


def promote(bucket: str, name: str, version: str, prefix: str = MODELS_PREFIX, client=None,
            forced: bool = False, forward_only: bool = False) -> dict:
    """Make complete VERSION the production model of NAME; the one it replaces can be rolled back to. Returns
    the alias as it now is.

    No gate here (promote_if_passing gates); forced: a person promoted it past the gate, as the alias records.
    forward_only: production stays as it is when it holds a version for a later time (read.version_order), so
    that a rerun of an old schedule slot never moves production back."""
    client = client or s3_client()

    def change(current: dict | None) -> tuple[str, list[str], str] | None:
        if forward_only and current is not None and _later(bucket, name, prefix, client, current["version"], version):
            return None
        previous = [] if current is None else current["previous"]
        if current is not None and current["version"] != version:
            previous = [v for v in previous if v != current["version"]] + [current["version"]]
        return version, previous, "promote --force" if forced else "promote"

    return _swap(bucket, name, prefix, client, change)


def _later(bucket: str, name: str, prefix: str, client, version: str, than: str) -> bool:
    return version_order(read_manifest(bucket, name, version, prefix, client)) > version_order(
        read_manifest(bucket, name, than, prefix, client))


def rollback(bucket: str, name: str, prefix: str = MODELS_PREFIX, client=None) -> dict:
    """Production goes back to the version it had before the current one (skipping versions since deleted)."""
    client = client or s3_client()

    def change(current: dict | None) -> tuple[str, list[str], str]:
        previous = list(current["previous"]) if current else []
        while previous:
            version = previous.pop()
            if read_object(bucket, f"{version_prefix(prefix, name, version)}/{MANIFEST}",
                           client) is not None:
                return version, previous, "rollback"
            # deleted since: roll further back
        raise VersionNotFoundError(f"model '{name}' has no earlier production version to roll back to")

    return _swap(bucket, name, prefix, client, change)


def list_models(bucket: str, name: str, prefix: str = MODELS_PREFIX, client=None) -> list[dict]:
    """Complete versions of NAME, oldest slot first: version, created_at, metrics, and which is production."""
    client = client or s3_client()
    alias = read_alias(bucket, name, prefix, client)
    current = alias["version"] if alias else None
    return [{"version": m["version"], "created_at": m.get("created_at"), "production": m["version"] == current,
             "metrics": m.get("metrics") or {}} for m in list_versions(bucket, name, prefix, client)]


# --- retention ------------------------------------------------------------------------------

def referenced_models(bucket: str, name: str, dataset_prefix: str = "datasets",
                      prefix: str = MODELS_PREFIX, client=None) -> set[str]:
    """Versions of model NAME that a complete dataset version's manifest names as the model it came from."""
    client = client or s3_client()
    folder = f"s3://{bucket}/{prefix}/{name}/"
    found = set()
    for dataset in list_datasets(bucket, dataset_prefix, client):
        for manifest in list_versions(bucket, dataset, dataset_prefix, client):
            uri = manifest.get("model_uri") or (manifest.get("model") or {}).get("uri") or ""
            if uri.startswith(folder):
                found.add(uri[len(folder):].strip("/"))
    return found


def apply_model_retention(bucket: str, name: str, keep: int, dataset_prefix: str = "datasets",
                          prefix: str = MODELS_PREFIX, client=None) -> list[str]:
    """Keep the newest KEEP versions of model NAME, its pinned ones, production and its rollback history, and
    every version a kept dataset names; the alias is read again right before each deletion."""
    client = client or s3_client()
    protected = referenced_models(bucket, name, dataset_prefix, prefix, client) | in_production(bucket, name, prefix,
                                                                                                client)
    return apply_retention(bucket, name, keep, prefix, client, protect=protected,
                           still_protected=lambda version: version in in_production(bucket, name, prefix, client))


def in_production(bucket: str, name: str, prefix: str = MODELS_PREFIX, client=None) -> set[str]:
    """The production version of model NAME and its rollback history (the alias's `previous`)."""
    alias = read_alias(bucket, name, prefix, client)
    return {alias["version"], *alias.get("previous", [])} if alias else set()


# --- hand-off: the local model to S3, and a published one back ------------------------------

def run_publish_model(params: Params, version: str, bucket: str, metrics: dict, layout: Layout = Layout(),
                      prefix: str = MODELS_PREFIX) -> str:
    """Publish models/<dataset>/ as s3://BUCKET/models/<dataset>/VERSION/ with its evaluation metrics."""
    require_measured(metrics, layout.model(params))  # before any upload
    # Its training curves travel with it: a card made from the fetched model shows them (gan_core.card).
    manifest = {**provenance(params, layout), "metrics": metrics, "inputs": training_inputs(params),
                "curves": read_curves(layout.plots)}
    return publish_model(layout.model(params), bucket=bucket, name=params.prepare.dataset,
                                 version=version, manifest=manifest, prefix=prefix)


def parse_checkpoint(checkpoint: str, bucket: str, name: str) -> tuple[str, str, str, str]:
    """(bucket, prefix, name, version) of "production", "latest", a version, or s3://BUCKET/PREFIX/NAME/VERSION/."""
    if not checkpoint.startswith("s3://"):
        return bucket, MODELS_PREFIX, name, checkpoint
    parts = checkpoint.removeprefix("s3://").strip("/").split("/")
    if len(parts) < 4:
        raise ValueError(f"checkpoint {checkpoint!r}: expected s3://BUCKET/PREFIX/NAME/VERSION")
    return parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1]


def fetch_published_model(checkpoint: str, bucket: str, name: str) -> ModelSource:
    """Resolve and download (or reuse from the cache) a published model; every file verified."""
    bucket, prefix, name, version = parse_checkpoint(checkpoint, bucket, name)
    if version == PRODUCTION:
        version = production_version(bucket, name, prefix)
    directory = fetch_model(bucket, name, version, model_cache_dir(), prefix=prefix)
    manifest = json.loads((directory / MANIFEST).read_text())
    return ModelSource(directory, version_uri(bucket, prefix, name, directory.name),
                       manifest.get("metrics") or {}, directory.name,
                       {key: manifest.get(key) for key in ("git", "dvc", "params")})
