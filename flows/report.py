"""Each flow run's markdown artifact: one table of what it produced."""

from __future__ import annotations

import re

from prefect.artifacts import create_markdown_artifact


def artifact_key(text: str) -> str:
    """Prefect's artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def report(stage: str, name: str, rows: dict) -> None:
    """This flow run's markdown artifact: one table of what it produced, keyed by stage and name."""
    key = artifact_key(f"{stage}-{name}")
    lines = [f"### {stage}: {name}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in flatten(rows).items()]
    create_markdown_artifact("\n".join(lines), key=key, description=f"{stage} {name}")


def flatten(rows: dict, parent: str = "") -> dict:
    flat = {}
    for key, value in rows.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{parent}{key}.")
        else:
            flat[f"{parent}{key}"] = value
    return flat


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")
