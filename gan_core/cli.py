"""`ganforge ...`: argument parsing only; every command calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gan_core.config import load_params
from gan_core.errors import readable_errors, setup_hint

COMMANDS = {}


def command(fn):
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


@command
def cmd_prepare(args) -> object:
    from gan_core.stages.prepare import run_prepare
    return run_prepare(load_params(args.params))


@command
def cmd_train(args) -> object:
    from gan_core.stages.train import run_train
    return run_train(load_params(args.params), resume=args.resume)


@command
def cmd_evaluate(args) -> object:
    from gan_core.stages.evaluate import run_evaluate
    from gan_core.verdict import verdict
    params = load_params(args.params)
    metrics = run_evaluate(params)
    # The verdict on stderr, first to be read; the metrics as JSON on stdout, for a pipe.
    print("\n".join(verdict(metrics, params.gate).lines()), file=sys.stderr)
    return metrics


@command
def cmd_compare_rejection(args) -> object:
    from gan_core.stages.evaluate import run_rejection_table
    rows = run_rejection_table(load_params(args.params), args.acceptance)
    print("| target acceptance | acceptance | FD | FD / plain | precision | recall |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        target = "off" if row["target"] is None else f"{row['target']:.2f}"
        print(f"| {target} | {row['acceptance']:.3f} | {row['fd']:.3f} | {row['fd_vs_plain']:.3f} "
              f"| {row['precision']:.3f} | {row['recall']:.3f} |")
    print(f"real-real floor (train vs test): FD {rows[0]['fd_floor']:.3f}")
    return None


def parse_class_counts(text: str) -> dict[int | str, int]:
    """--class-counts "3=5000,7=1000" (classes by index or name) -> {3: 5000, 7: 1000}."""
    counts: dict[int | str, int] = {}
    for part in text.split(","):
        cls, sep, count = part.strip().partition("=")
        if not sep or not cls.strip() or not count.strip().isdigit() or cls.strip() in counts:
            raise ValueError(f"--class-counts: expected CLASS=COUNT,... with each class once and whole counts "
                             f"(got {text!r})")
        counts[cls.strip()] = int(count)
    return counts


def parse_number(flag: str, text: str | None, kind: type) -> int | float | None:
    try:
        return None if text is None else kind(text)
    except ValueError:
        raise ValueError(f"{flag}: expected {'an integer' if kind is int else 'a number'} (got {text!r})") from None


def generate_params(args):
    """params.yaml with the command line's --num-samples, --class-counts and --truncation in place."""
    from gan_core.config import override_params
    from gan_core.stages.generate import sample_overrides
    counts = None if args.class_counts is None else parse_class_counts(args.class_counts)
    params = override_params(load_params(args.params), {"generate.truncation": parse_number(
        "--truncation", args.truncation, float)}, source="--truncation")
    sizes = sample_overrides(parse_number("--num-samples", args.num_samples, int), counts)
    return override_params(params, sizes, source="--num-samples/--class-counts")


@command
def cmd_generate(args) -> object:
    from gan_core.layout import Layout, bucket_from_env
    from gan_core.provenance import local_model
    from gan_core.registry import check_dataset_model
    from gan_core.stages.generate import publication_version, run_generate, run_publish
    params = generate_params(args)
    version = None if args.no_publish else publication_version(args.version)
    if not args.no_publish:  # before any work: only a model that passed the gate makes a dataset
        check_dataset_model(local_model(params), params.gate, "datasets")
    summary = run_generate(params, Layout().generated(params))
    if args.no_publish:
        return summary
    return run_publish(params, summary, version, args.bucket or bucket_from_env())


@command
def cmd_list(args) -> object:
    from gan_core.layout import bucket_from_env
    from gan_core.publication.read import list_datasets, list_versions, no_versions_error
    bucket = args.bucket or bucket_from_env()
    if args.name is not None:  # an empty name is refused, not read as "all"
        versions = list_versions(bucket, args.name)
        if not versions:  # a misspelt name: say which names exist rather than print []
            raise no_versions_error(bucket, args.name)
        short = ("version", "created_at", "sample_count", "acceptance_rate")
        return versions if args.long else [{k: m.get(k) for k in short} for m in versions]
    names = list_datasets(bucket)
    if not args.long:
        return names
    # Every dataset's manifests less their shard lists: provenance, params and metrics at a glance.
    return {name: [{k: v for k, v in m.items() if k != "shards"} for m in list_versions(bucket, name)]
            for name in names}


@command
def cmd_download(args) -> object:
    from gan_core.layout import bucket_from_env
    from gan_core.publication.read import download_dataset
    path = download_dataset(args.bucket or bucket_from_env(), args.name, args.version, Path(args.to))
    return str(path)


@command
def cmd_show(args) -> object:
    from gan_core.images.card import CARD_FILES
    from gan_core.layout import bucket_from_env, card_cache_dir
    from gan_core.publication.read import download_card
    folder = download_card(args.bucket or bucket_from_env(), args.name, args.version,
                           Path(args.to) if args.to else card_cache_dir())
    # A table's card has no preview.png.
    return ({name: str(folder / name) for name in CARD_FILES if (folder / name).exists()}
            | {"open": (folder / "report.html").resolve().as_uri()})


@command
def cmd_models(args) -> object:
    from gan_core import registry
    from gan_core.layout import bucket_from_env
    bucket, name = args.bucket or bucket_from_env(), args.name or load_params(args.params).prepare.dataset
    if args.action == "list":
        return registry.list_models(bucket, name)
    if args.action == "promote":  # through the gate, on the version's own metrics, unless a person forces it
        if args.force:
            return registry.promote(bucket, name, args.version, forced=True)
        return registry.promote_if_passing(bucket, name, args.version, load_params(args.params).gate)
    if args.action == "rollback":
        return registry.rollback(bucket, name)
    if args.action in ("pin", "unpin"):
        from gan_core.publication.s3 import MODELS_PREFIX
        return _pin_or_unpin(args, bucket, name, MODELS_PREFIX)
    return _publish_model(args, bucket, name)


def _publish_model(args, bucket: str, name: str) -> dict:
    from gan_core import registry
    from gan_core.checkpoint import read_metrics
    from gan_core.layout import Layout
    from gan_core.registry import run_publish_model
    from gan_core.stages.generate import publication_version
    params, layout = load_params(args.params), Layout()
    if name != params.prepare.dataset:
        raise ValueError(f"--name {name}: publish sends the local models/{params.prepare.dataset}/ under its own name")
    version, metrics = publication_version(args.version), read_metrics(layout.metrics)
    uri = run_publish_model(params, version, bucket, metrics, layout)  # refuses another model's metrics
    promoted = registry.promote_if_passing(bucket, name, version, params.gate) if args.promote else None
    return {"model": uri, "production": promoted}


@command
def cmd_datasets(args) -> object:
    from gan_core.layout import bucket_from_env
    from gan_core.publication import retention
    bucket = args.bucket or bucket_from_env()
    if args.action == "pins":
        return retention.pinned_versions(bucket, args.name)
    if args.action == "delete":
        return {"deleted": f"{args.name}/{args.version}",
                "objects": retention.delete_unpinned(bucket, args.name, args.version)}
    return _pin_or_unpin(args, bucket, args.name, "datasets")


def _pin_or_unpin(args, bucket: str, name: str, prefix: str) -> dict:
    from gan_core.publication import retention
    if args.action == "pin":
        return retention.pin(bucket, name, args.version, prefix, reason=args.reason)
    return {"unpinned": retention.unpin(bucket, name, args.version, prefix)}


@command
def cmd_s3(args) -> object:
    from gan_core import s3server
    action = {"start": s3server.start_embedded, "stop": s3server.stop_embedded,
              "status": s3server.status_embedded}[args.action]
    return action(Path(args.state_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "train", "evaluate", "generate"):
        stage = sub.add_parser(name, help=f"run the {name} stage on params.yaml")
        stage.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub.choices["train"].add_argument("--resume", action="store_true", help="continue from the last good checkpoint")
    gen = sub.choices["generate"]
    gen.add_argument("--no-publish", action="store_true", help="write shards locally only")
    gen.add_argument("--version", help="dataset version to publish (default: UTC time)")
    gen.add_argument("--bucket", help="S3 bucket (default: $GANFORGE_BUCKET or 'ganforge')")
    gen.add_argument("--num-samples", metavar="N", help="samples in all (default: generate.num_samples)")
    gen.add_argument("--class-counts", metavar="CLASS=N,...",
                     help="samples per class, by index or name, e.g. 3=5000,7=1000 (default: balanced)")
    gen.add_argument("--truncation", metavar="PSI", help="truncation trick's psi in (0, 1]; 1: off")
    drs = sub.add_parser("compare-rejection", help="FD / precision / recall with and without rejection sampling")
    drs.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    drs.add_argument("--acceptance", type=float, nargs="+", default=[0.8, 0.5, 0.3],
                     help="target acceptance rates to compare with plain sampling (default: 0.8 0.5 0.3)")
    lst = sub.add_parser("list", help="published datasets, or the versions of one")
    lst.add_argument("name", nargs="?")
    lst.add_argument("--long", action="store_true",
                     help="manifests with provenance (git revision, dirty, DVC hashes, params) and metrics; "
                          "without NAME, of every dataset (shard lists left out)")
    lst.add_argument("--bucket")
    down = sub.add_parser("download", help="download a dataset version and verify every shard")
    down.add_argument("name")
    down.add_argument("--version", default="latest")
    down.add_argument("--to", required=True, help="target folder; the data lands in TO/NAME/VERSION")
    down.add_argument("--bucket")
    show = sub.add_parser("show", help="fetch a dataset version's card (README.md, preview.png, report.html), verified")
    show.add_argument("name")
    show.add_argument("--version", default="latest")
    show.add_argument("--to", help="target folder (default: ~/.cache/ganforge/cards, or $GANFORGE_CACHE/cards); "
                                   "the card lands in TO/NAME/VERSION/_card")
    show.add_argument("--bucket")
    models = sub.add_parser("models", help="the model registry: published versions and the production alias")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="versions with their metrics, and which one is production").add_argument(
        "name", nargs="?")
    promote = actions.add_parser("promote", help="make a complete version production if its metrics pass params' gate")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true", help="promote it even though it misses the gate")
    actions.add_parser("rollback", help="production back to the version it had before")
    actions.add_parser("pin", help="keep a version from retention until unpinned").add_argument("version")
    actions.add_parser("unpin", help="let retention have a pinned version again").add_argument("version")
    actions.choices["pin"].add_argument("--reason", default="", help="why, shown by `ganforge datasets pins`")
    pub = actions.add_parser("publish", help="publish the local models/<dataset>/ with metrics/eval.json")
    pub.add_argument("--version", help="model version (default: UTC time)")
    pub.add_argument("--promote", action="store_true", help="then make it production if it passes params' gate")
    for action in actions.choices.values():
        if action.prog.split()[-1] != "list":
            action.add_argument("--name", help="model name (default: prepare.dataset)")
        action.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        action.add_argument("--bucket")
    _add_datasets_parser(sub)
    s3 = sub.add_parser("s3", help="the embedded SeaweedFS S3 server")
    s3.add_argument("action", choices=["start", "stop", "status"])
    s3.add_argument("--state-dir", default=".ganforge", help="where its data, pid and s3.env live")
    return parser


def _add_datasets_parser(sub) -> None:
    datasets = sub.add_parser("datasets", help="pins that retention never deletes, and deleting a version")
    verbs = datasets.add_subparsers(dest="action", required=True)
    for verb, text in (("pin", "keep NAME VERSION whatever retention's keep_last says, until unpinned"),
                       ("unpin", "let retention have NAME VERSION again"),
                       ("delete", "delete NAME VERSION now, manifest first (refused while pinned)"),
                       ("pins", "the pinned versions of NAME")):
        verb_parser = verbs.add_parser(verb, help=text)
        verb_parser.add_argument("name")
        if verb != "pins":
            verb_parser.add_argument("version")
        verb_parser.add_argument("--bucket")
    verbs.choices["pin"].add_argument("--reason", default="", help="why, shown by `ganforge datasets pins`")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except readable_errors() as exc:
        # Library errors are written to be read: print them without a traceback.
        print(f"ganforge {args.command}: error: {exc}{setup_hint(exc)}", file=sys.stderr)
        return 1
    if result is not None:
        _print_quietly(json.dumps(result, indent=2, default=str))
    return 0


def _print_quietly(text: str) -> None:
    """Print; a reader that stopped early (`ganforge list --long | head`) ends it quietly, as for Unix tools."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
