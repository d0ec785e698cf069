"""What every published card shares, images or tables: its sources, provenance, and metrics beside their goals."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

# The README's "Quality" goals: (metric, comparison, bound).
GOALS = {"fd_ratio": ("<=", 1.5), "utility": (">=", 0.97), "label_consistency": (">=", 0.95),
         "memorisation": ("<", 0.01), "d_auc": ("near", 0.5)}


@dataclass(frozen=True)
class CardSources:
    """What a card is made from: the manifest about to be published and the local files behind it."""

    manifest: dict
    uri: str  # s3://BUCKET/PREFIX/NAME/VERSION/
    shard_paths: list[Path]
    prepared: Path
    model_dir: Path
    plots_dir: Path
    license: str


def size_category(count: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M")]
    return next((name for bound, name in bounds if count < bound), "n>10M")


def provenance_and_quality(m: dict) -> list[str]:
    """A card's "How it was made" and "Quality" sections, from the manifest (images and tables alike)."""
    dvc, git, params = m.get("dvc", {}), m.get("git", {}), m.get("params", {})
    rejection = m.get("rejection") or {}
    return ["## How it was made", "",
            f"- model: `{m.get('model_uri') or 'the local models/ folder'}`, generator sha256 "
            f"`{m.get('generator_sha256')}`",
            f"- data: `{dvc.get('source', {}).get('path')}` (DVC md5 `{dvc.get('source', {}).get('md5') or '-'}`), "
            f"prepared data md5 `{dvc.get('data', {}).get('md5') or '-'}`",
            f"- code: git `{git.get('revision') or '-'}`{' (uncommitted changes)' if git.get('dirty') else ''}",
            f"- params: `{json.dumps(params.get('generate', {}), sort_keys=True)}`",
            f"- rejection sampling: {'on' if rejection.get('enabled') else 'off'}; acceptance rate "
            f"{m.get('acceptance_rate', 1.0):.3f}", "",
            "## Quality", "", *metrics_table(m.get("metrics") or {}), ""]


def metrics_table(metrics: dict) -> list[str]:
    """Markdown rows: each metric next to its goal; the Frechet distance next to the real-real floor."""
    if not metrics:
        return ["No evaluation metrics were recorded for this model."]
    rows = ["| metric | value | goal |", "|---|---|---|"]
    for key, value in sorted(_flat(metrics).items()):
        goal = GOALS.get(key)
        note = f"{goal[0]} {goal[1]}{_verdict(value, *goal)}" if goal else ""
        if key == "fd" and "fd_floor" in metrics:
            note = f"real-real floor {metrics['fd_floor']:.4g}"
        rows.append(f"| {key} | {value:.4g} | {note} |" if isinstance(value, float) else f"| {key} | {value} | {note} |")
    return rows


def _verdict(value, comparison: str, bound: float) -> str:
    checks = {"<=": lambda: value <= bound, ">=": lambda: value >= bound, "<": lambda: value < bound}
    if comparison not in checks or not isinstance(value, (int, float)):
        return ""
    return ": met" if checks[comparison]() else ": missed"


def _flat(metrics: dict, parent: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        flat |= _flat(value, f"{parent}{key}.") if isinstance(value, dict) else {f"{parent}{key}": value}
    return flat


def markdown_table_html(rows: list[str]) -> str:
    if len(rows) < 2:
        return f"<p>{html.escape(rows[0])}</p>"
    cells = [[html.escape(c.strip()) for c in row.strip("|").split("|")] for row in rows if not row.startswith("|---")]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    return "<table><tr>" + head + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:]) + "</table>"
