"""The model registry on S3: model hand-off (publish, resolve, fetch), which published version is `production`,
the quality gate that moves it, retention.

Layout: s3://BUCKET/models/NAME/VERSION/ (gan_core.storage), plus
  models/NAME/_aliases/production.json           {"version", "uri", "previous": [...], "set_at", "action"}
  models/NAME/_aliases/production-history/*.json  one object per change, never rewritten (an audit log)
The alias is replaced by one PUT of a small JSON (atomic for readers), conditional on the ETag it was read
with (two promotions at once: the later one reads again), and only ever names a complete version. Its
`previous` list is a stack of earlier production versions that `rollback` pops.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

from gan_core import storage
from gan_core.card import read_curves
from gan_core.config import GateConfig, Params
from gan_core.layout import Layout, model_cache_dir
from gan_core.provenance import ModelSource, provenance, training_inputs

PRODUCTION = "production"
ALIASES = "_aliases"  # '_': never a version name (storage.NAME_RE), so listing versions skips it
MAX_PREVIOUS = 50


class GateError(ValueError):
    """A model missed the quality gate: it stays published but does not become production."""


# --- quality gate ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GateResult:
    misses: list[str]  # one readable line per metric that missed or is missing

    @property
    def passed(self) -> bool:
        return not self.misses

    def markdown(self, name: str, version: str, metrics: dict, gate: GateConfig) -> str:
        verdict = "passed: promoted to production" if self.passed else "FAILED: not promoted"
        lines = [f"### quality gate: {name} {version} {verdict}", "", "| metric | value | threshold |", "|---|---|---|"]
        for key, metric, bound, threshold in _thresholds(gate, metrics.get("kind", "image")):
            lines.append(f"| {metric} | {metrics.get(metric, 'missing')} | {bound} {threshold} |")
        return "\n".join(lines + [""] + [f"- {miss}" for miss in self.misses])


def _thresholds(gate: GateConfig, kind: str = "image") -> list[tuple[str, str, str, float | None]]:
    """(key, metric, "min" or "max", threshold) of each gate setting for a model of `kind` (the evaluation's
    `kind`: "table", else images): `fd_ratio_max` bounds `fd_ratio` from above."""
    return [(key, *key.rsplit("_", 1), threshold) for key, threshold in gate.applies_to(kind).items()]


def check_gate(metrics: dict, gate: GateConfig) -> GateResult:
    """Each threshold of `gate` for the evaluated kind against `metrics`; a missing or non-numeric metric misses
    unless its threshold is null."""
    misses = []
    for key, metric, bound, threshold in _thresholds(gate, metrics.get("kind", "image")):
        if threshold is None:
            continue
        value = metrics.get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            misses.append(f"{metric} is missing from the evaluation (gate.{key}: {threshold})")
        elif (value > threshold) if bound == "max" else (value < threshold):
            misses.append(f"{metric} {value:.4g} {'>' if bound == 'max' else '<'} {threshold} (gate.{key})")
    return GateResult(misses)


def gate_error(name: str, version: str, result: GateResult) -> GateError:
    return GateError(f"model {name} {version} is published but not promoted, the quality gate failed: "
                     f"{'; '.join(result.misses)}")


def promote_if_passing(bucket: str, name: str, version: str, metrics: dict, gate: GateConfig,
                       prefix: str = storage.MODELS_PREFIX, client=None) -> dict:
    """promote() when METRICS pass GATE; otherwise GateError naming what missed, production unchanged."""
    result = check_gate(metrics, gate)
    if not result.passed:
        raise gate_error(name, version, result)
    return promote(bucket, name, version, prefix, client)


# --- the production alias -------------------------------------------------------------------

def _alias_key(name: str, alias: str = PRODUCTION, prefix: str = storage.MODELS_PREFIX) -> str:
    return f"{prefix}/{storage.validate_name('name', name)}/{ALIASES}/{alias}.json"


class _AliasChanged(Exception):
    """Another promotion replaced the alias between our read and our write."""


def _read_tagged(bucket: str, name: str, prefix: str, client) -> tuple[dict | None, str | None]:
    raw, etag = storage.read_object_tagged(bucket, _alias_key(name, prefix=prefix), client)
    return (json.loads(raw) if raw is not None else None), etag


def read_alias(bucket: str, name: str, prefix: str = storage.MODELS_PREFIX, client=None) -> dict | None:
    """The production alias of model NAME, or None when no version was ever promoted."""
    return _read_tagged(bucket, name, prefix, client or storage.s3_client())[0]


def production_version(bucket: str, name: str, prefix: str = storage.MODELS_PREFIX, client=None) -> str:
    alias = read_alias(bucket, name, prefix, client)
    if alias is None:
        raise storage.VersionNotFoundError(
            f"model '{name}' has no production version (no s3://{bucket}/{_alias_key(name, prefix=prefix)}): "
            f"run training with publish (the train-and-publish/training deployment), or `ganforge models promote VERSION "
            f"--name {name}`")
    return alias["version"]


def _set_production(bucket: str, name: str, version: str, previous: list[str], action: str, prefix: str,
                    client, etag: str | None) -> dict:
    """Replace the alias read with ETAG (None: there was none); _AliasChanged if another write came first."""
    storage.read_manifest(bucket, name, version, prefix, client)  # only a complete version: raises otherwise
    now = dt.datetime.now(dt.timezone.utc)
    body = {"name": name, "version": version, "uri": storage.version_uri(bucket, prefix, name, version),
            "previous": previous[-MAX_PREVIOUS:], "action": action, "set_at": now.isoformat(timespec="seconds")}
    text = json.dumps(body, indent=2, sort_keys=True).encode()
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    key = _alias_key(name, prefix=prefix)
    # A retried request whose first attempt succeeded also fails its condition: that write is ours.
    if not storage.put_if(bucket, key, text, client, **condition) and storage.read_object(bucket, key, client) != text:
        raise _AliasChanged()
    # After the alias, which holds the truth: a crash in between loses an audit entry, never invents one.
    history = _alias_key(name, prefix=prefix).removesuffix(".json") + "-history"
    client.put_object(Bucket=bucket, Key=f"{history}/{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{version}.json", Body=text)
    return body


def _swap(bucket: str, name: str, prefix: str, client, change) -> dict:
    """Read the alias, change(current alias) -> (version, previous, action), write it back unless another
    promotion came in between; then read again and retry."""
    for _ in range(5):
        current, etag = _read_tagged(bucket, name, prefix, client)
        try:
            return _set_production(bucket, name, *change(current), prefix, client, etag)
        except _AliasChanged:
            continue
    raise storage.StorageError(f"the production alias of model '{name}' kept changing under this promotion: retry")


def promote(bucket: str, name: str, version: str, prefix: str = storage.MODELS_PREFIX, client=None) -> dict:
    """Make complete VERSION the production model of NAME; the one it replaces can be rolled back to."""
    def change(current: dict | None) -> tuple[str, list[str], str]:
        previous = [] if current is None else current["previous"]
        if current is not None and current["version"] != version:
            previous = [v for v in previous if v != current["version"]] + [current["version"]]
        return version, previous, "promote"

    return _swap(bucket, name, prefix, client or storage.s3_client(), change)


def rollback(bucket: str, name: str, prefix: str = storage.MODELS_PREFIX, client=None) -> dict:
    """Production goes back to the version it had before the current one (skipping versions since deleted)."""
    client = client or storage.s3_client()

    def change(current: dict | None) -> tuple[str, list[str], str]:
        previous = list(current["previous"]) if current else []
        while previous:
            version = previous.pop()
            if storage.read_object(bucket, f"{storage.version_prefix(prefix, name, version)}/{storage.MANIFEST}",
                                   client) is not None:
                return version, previous, "rollback"
            # deleted since: roll further back
        raise storage.VersionNotFoundError(f"model '{name}' has no earlier production version to roll back to")

    return _swap(bucket, name, prefix, client, change)


def list_models(bucket: str, name: str, prefix: str = storage.MODELS_PREFIX, client=None) -> list[dict]:
    """Complete versions of NAME, oldest slot first: version, created_at, metrics, and which is production."""
    client = client or storage.s3_client()
    alias = read_alias(bucket, name, prefix, client)
    current = alias["version"] if alias else None
    return [{"version": m["version"], "created_at": m.get("created_at"), "production": m["version"] == current,
             "metrics": m.get("metrics") or {}} for m in storage.list_versions(bucket, name, prefix, client)]


# --- retention ------------------------------------------------------------------------------

def referenced_models(bucket: str, name: str, dataset_prefix: str = "datasets",
                      prefix: str = storage.MODELS_PREFIX, client=None) -> set[str]:
    """Versions of model NAME that a complete dataset version's manifest names as the model it came from."""
    client = client or storage.s3_client()
    folder = f"s3://{bucket}/{prefix}/{name}/"
    found = set()
    for dataset in storage.list_datasets(bucket, dataset_prefix, client):
        for manifest in storage.list_versions(bucket, dataset, dataset_prefix, client):
            uri = manifest.get("model_uri") or (manifest.get("model") or {}).get("uri") or ""
            if uri.startswith(folder):
                found.add(uri[len(folder):].strip("/"))
    return found


def apply_model_retention(bucket: str, name: str, keep: int, dataset_prefix: str = "datasets",
                          prefix: str = storage.MODELS_PREFIX, client=None) -> list[str]:
    """Keep the newest KEEP versions of model NAME, production and every version a kept dataset names."""
    client = client or storage.s3_client()
    alias = read_alias(bucket, name, prefix, client)
    protected = referenced_models(bucket, name, dataset_prefix, prefix, client) | ({alias["version"]} if alias else set())
    return storage.apply_retention(bucket, name, keep, prefix, client, protect=protected)


# --- hand-off: the local model to S3, and a published one back ------------------------------

def run_publish_model(params: Params, version: str, bucket: str, metrics: dict, layout: Layout = Layout(),
                      prefix: str = storage.MODELS_PREFIX) -> str:
    """Publish models/<dataset>/ as s3://BUCKET/models/<dataset>/VERSION/ with its evaluation metrics."""
    # Its training curves travel with it: a card made from the fetched model shows them (gan_core.card).
    manifest = {**provenance(params, layout), "metrics": metrics, "inputs": training_inputs(params),
                "curves": read_curves(layout.plots)}
    return storage.publish_model(layout.model(params), bucket=bucket, name=params.prepare.dataset,
                                 version=version, manifest=manifest, prefix=prefix)


def parse_checkpoint(checkpoint: str, bucket: str, name: str) -> tuple[str, str, str, str]:
    """(bucket, prefix, name, version) of "production", "latest", a version, or s3://BUCKET/PREFIX/NAME/VERSION/."""
    if not checkpoint.startswith("s3://"):
        return bucket, storage.MODELS_PREFIX, name, checkpoint
    parts = checkpoint.removeprefix("s3://").strip("/").split("/")
    if len(parts) < 4:
        raise ValueError(f"checkpoint {checkpoint!r}: expected s3://BUCKET/PREFIX/NAME/VERSION")
    return parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1]


def fetch_published_model(checkpoint: str, bucket: str, name: str) -> ModelSource:
    """Resolve and download (or reuse from the cache) a published model; every file verified."""
    bucket, prefix, name, version = parse_checkpoint(checkpoint, bucket, name)
    if version == PRODUCTION:
        version = production_version(bucket, name, prefix)
    directory = storage.fetch_model(bucket, name, version, model_cache_dir(), prefix=prefix)
    manifest = json.loads((directory / storage.MANIFEST).read_text())
    return ModelSource(directory, storage.version_uri(bucket, prefix, name, directory.name),
                       manifest.get("metrics") or {}, directory.name,
                       {key: manifest.get(key) for key in ("git", "dvc", "params")})
