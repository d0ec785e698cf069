"""What every published card shares, images or tables: its sources, the verdict first, provenance, metrics, charts.

Everything a card shows comes from the model it describes: its own evaluation metrics, its own training
curves (published with it), and real data only when that is the data it was trained on (fingerprints).
Text from data (class names, column names, condition values) is Markdown- or HTML-escaped wherever it lands.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan_core.checkpoint import read_metrics
from gan_core.config import GateConfig
from gan_core.fingerprint import data_fingerprint
from gan_core.publication.s3 import MANIFEST
from gan_core.verdict import DESCRIPTIONS, MET, MISSED, SPREAD_NOTE, Verdict

CURVE_FILES = ("losses.csv", "selection.csv")  # a model's training curves (plots/), published in its manifest


@dataclass(frozen=True)
class CardSources:
    """What a card is made from: the manifest about to be published and the local files behind it."""

    manifest: dict
    uri: str  # s3://BUCKET/PREFIX/NAME/VERSION/
    shard_paths: list[Path]
    prepared: Path  # this checkout's prepared data: shown only when it is what the model was trained on
    model_dir: Path
    curves: dict[str, str]  # the model's own training curves: CSV text by file name (CURVE_FILES)
    license: str
    gate: GateConfig = field(default_factory=GateConfig)  # params.yaml's `gate:`, as the registry applies it


def size_category(count: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M")]
    return next((name for bound, name in bounds if count < bound), "n>10M")


# --- the model's own curves and data ----------------------------------------------------------

def read_curves(plots_dir: Path) -> dict[str, str]:
    """The training curves in a plots folder (the local model's), as CSV text by file name."""
    return {name: (Path(plots_dir) / name).read_text() for name in CURVE_FILES if (Path(plots_dir) / name).is_file()}


def published_curves(model_dir: Path) -> dict[str, str]:
    """The curves a fetched model was published with (its manifest's `curves`); {} when it has none."""
    curves = read_metrics(Path(model_dir) / MANIFEST).get("curves") or {}  # the manifest beside its files
    return {name: text for name, text in curves.items() if name in CURVE_FILES and isinstance(text, str)}


def trained_on(model_dir: Path, prepared: Path) -> bool:
    """Whether `prepared` is the data the model was trained on: same splits by fingerprint (images record
    it as meta.json `fingerprint`, tables as `lineage`). Only then may a card compare it with real data."""
    meta = read_metrics(Path(model_dir) / "meta.json")
    lineage = next((v for v in (meta.get("lineage"), meta.get("fingerprint")) if isinstance(v, dict)), {})
    recorded = (lineage.get("data") or {}).get("splits")
    return bool(recorded) and Path(prepared).is_file() and data_fingerprint(prepared)["splits"] == recorded


def not_the_training_data(prepared: Path) -> str:
    """Why a card leaves out what needs the real data."""
    if not Path(prepared).is_file():
        return f"The prepared data ({prepared}) is not available where this card was made."
    return (f"The prepared data here ({prepared}) is not the data this model was trained on (their fingerprints "
            "differ), so nothing is compared with it; the model's own evaluation is in the metrics.")


# --- escaping ---------------------------------------------------------------------------------

def md_text(text: object) -> str:
    """Plain text inside Markdown, on one line: each character that could start markup, a link, an HTML tag, an
    entity or a table cell is backslash-escaped (CommonMark escapes any ASCII punctuation so)."""
    return re.sub(r"([\\`*_{}\[\]<>()#!|~&])", r"\\\1", " ".join(str(text).split()))


def md_code(text: object) -> str:
    """An inline code span holding `text` verbatim: fenced with more backticks than any run inside it."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_cell_code(text: object) -> str:
    """md_code inside a table row: GitHub's tables split cells at `|` even in code, unless escaped."""
    return md_code(text).replace("|", "\\|")


# --- the verdict ------------------------------------------------------------------------------

def verdict_markdown(result: Verdict) -> list[str]:
    """The card README's first section: passed or missed, then each threshold."""
    lines = ["## Verdict", "", f"**This model {result.headline}.**", ""]
    if not result.evaluated:
        return lines
    lines += ["| | metric | value | goal | |", "|---|---|---|---|---|"]
    marks = {MET: "✅", MISSED: "❌"}
    for check in result.checks:
        lines.append(f"| {marks.get(check.status, '–')} | {check.metric} ({DESCRIPTIONS.get(check.metric, '')}) | "
                     f"{check.shown_value} | {check.goal} (gate.{check.key}) | {check.status} |")
    spread = f" {SPREAD_NOTE}." if any(check.spread is not None for check in result.checks) else ""
    return lines + ["", f"Thresholds: the `gate:` section of params.yaml, which also decides `production`.{spread}", ""]


def verdict_html(result: Verdict) -> str:
    """A banner in the gate's colour (green passed, red missed, grey not evaluated), a row per threshold."""
    state = "passed" if result.passed else ("missed" if result.evaluated else "unknown")
    rows = "".join(
        f"<tr class='{check.status.replace(' ', '-')}'><td>{html.escape(check.status)}</td>"
        f"<td><b>{html.escape(check.metric)}</b><br><small>{html.escape(DESCRIPTIONS.get(check.metric, ''))}"
        f"</small></td><td>{html.escape(check.shown_value)}</td><td>{html.escape(check.goal)}</td></tr>"
        for check in result.checks) if result.evaluated else ""
    table = f"<table class='gate'><tr><th></th><th>metric</th><th>value</th><th>goal</th></tr>{rows}</table>"
    spread = html.escape(f" {SPREAD_NOTE}.") if any(check.spread is not None for check in result.checks) else ""
    return (f"<section class='verdict {state}'><p class='headline'>This model {html.escape(result.headline)}.</p>"
            f"{table if rows else ''}<p><small>Thresholds: params.yaml <code>gate:</code>, which also decides "
            f"<code>production</code>.{spread}</small></p></section>")


# --- provenance and the full metrics ----------------------------------------------------------

def provenance_markdown(m: dict) -> list[str]:
    """A card's "How it was made" section, from the manifest (images and tables alike)."""
    dvc, git, params = m.get("dvc", {}), m.get("git", {}), m.get("params", {})
    rejection = m.get("rejection") or {}
    return ["## How it was made", "",
            f"- model: {md_code(m.get('model_uri') or 'the local models/ folder')}, generator sha256 "
            f"{md_code(m.get('generator_sha256'))}",
            f"- data: {md_code(dvc.get('source', {}).get('path'))} (DVC md5 "
            f"{md_code(dvc.get('source', {}).get('md5') or '-')}), prepared data md5 "
            f"{md_code(dvc.get('data', {}).get('md5') or '-')}",
            f"- code: git {md_code(git.get('revision') or '-')}{' (uncommitted changes)' if git.get('dirty') else ''}",
            f"- params: {md_code(json.dumps(params.get('generate', {}), sort_keys=True, ensure_ascii=False))}",
            f"- rejection sampling: {'on' if rejection.get('enabled') else 'off'}; acceptance rate "
            f"{m.get('acceptance_rate', 1.0):.3f}", ""]


def metrics_markdown(metrics: dict) -> list[str]:
    """The card README's full metrics: a Markdown table, every cell escaped."""
    rows = metric_rows(metrics)
    if not rows:
        return ["No evaluation metrics were recorded for this model.", ""]
    return (["| metric | value | note |", "|---|---|---|"]
            + [f"| {md_cell_code(key)} | {md_text(value)} | {md_text(note)} |" for key, value, note in rows] + [""])


def metrics_html(metrics: dict) -> str:
    """Every metric, folded away under the verdict: a reader opens it for the detail."""
    rows = metric_rows(metrics)
    if not rows:
        return "<p>No evaluation metrics were recorded for this model.</p>"
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td><td>{html.escape(n)}</td></tr>"
                    for k, v, n in rows)
    return (f"<details><summary>All {len(rows)} metrics of this model's evaluation</summary>"
            f"<table><tr><th>metric</th><th>value</th><th>note</th></tr>{cells}</table></details>")


def metric_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, value, note) for every metric, sorted. A metric with a 95 % interval (`X_low`, `X_high`)
    shows it in one row; when the interval spans the value of no difference (0, or 1 for a ratio) the
    row says so instead of a number that would read as a finding (KID 91.5 on an interval -119 to 459)."""
    flat = _flat(metrics)
    rows = []
    for key, value in sorted(flat.items()):
        stem = key.removesuffix("_low").removesuffix("_high")
        if stem != key and f"{stem}_low" in flat and f"{stem}_high" in flat and stem in flat:
            continue  # shown in the row of `stem`
        rows.append((key, *_value_and_note(key, value, flat)))
    return rows


def _value_and_note(key: str, value, flat: dict) -> tuple[str, str]:
    low, high = flat.get(f"{key}_low"), flat.get(f"{key}_high")
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    if key == "fd" and isinstance(flat.get("fd_floor"), (int, float)):
        return shown, f"real-real floor {flat['fd_floor']:.4g}"
    if not all(isinstance(v, (int, float)) for v in (value, low, high)):
        return shown, ""
    neutral = 1.0 if key.endswith("ratio") else 0.0
    interval = f"95 % interval {low:.3g} to {high:.3g}"
    if low <= neutral <= high:
        return (f"not distinguishable from {neutral:g}",
                f"{interval} spans {neutral:g}: the sample is too small to measure it (estimate {value:.3g})")
    return shown, interval


def _flat(metrics: dict, parent: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        flat |= _flat(value, f"{parent}{key}.") if isinstance(value, dict) else {f"{parent}{key}": value}
    return flat


# --- report.html: one self-contained page (no script, nothing fetched) --------------------------

STYLE = ("body{font-family:sans-serif;margin:1.2em 2em;max-width:1150px}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:middle}img{image-rendering:pixelated}"
         "h1{margin:0 0 .2em}h2{margin:.8em 0 .3em}.lede{margin:.2em 0 .6em;color:#444}"
         ".verdict{border:3px solid;border-radius:6px;padding:.4em 1em;margin:.4em 0}"
         ".verdict .headline{font-size:1.35em;font-weight:bold;margin:.2em 0 .4em}"
         ".verdict.passed{border-color:#1e8e3e;background:#e6f4ea}.verdict.passed .headline{color:#137333}"
         ".verdict.missed{border-color:#d93025;background:#fce8e6}.verdict.missed .headline{color:#b3261e}"
         ".verdict.unknown{border-color:#888;background:#f1f3f4}.gate td,.gate th{border-color:#bbb;padding:2px 8px}"
         "tr.met td:first-child{color:#137333;font-weight:bold}tr.missed td:first-child{color:#b3261e;font-weight:bold}"
         "tr.not-checked td:first-child{color:#666}details{margin:1em 0}summary{cursor:pointer;font-weight:bold}"
         ".charts{display:flex;flex-wrap:wrap;gap:8px}")


def page(title: str, body: list[str]) -> str:
    """A complete HTML page: title escaped here; body parts are HTML already."""
    title = html.escape(title)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
            f"</head><body><h1>{title}</h1>{''.join(body)}</body></html>\n")


def summary_line(m: dict, what: str) -> str:
    return (f"<p class='lede'>{m['sample_count']} synthetic {html.escape(what)}, acceptance rate "
            f"{m.get('acceptance_rate', 1.0):.3f}, model <code>{html.escape(str(m.get('model_uri') or 'local'))}"
            "</code></p>")


def read_csv_text(text: str | None) -> dict[str, np.ndarray] | None:
    """A numeric CSV with a header as columns; None when empty or unreadable."""
    import io

    if not text:
        return None
    try:
        table = np.genfromtxt(io.StringIO(text), delimiter=",", names=True, ndmin=1)
    except ValueError:
        return None
    return {name: np.atleast_1d(table[name]) for name in table.dtype.names} if table.size else None


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def svg_chart(x: np.ndarray, series: dict[str, np.ndarray], x_label: str, y_label: str, width: int = 640,
              height: int = 260, mark: tuple[float, str] | None = None) -> str:
    """An inline SVG line chart (no script, no fonts fetched): one polyline per series, a legend, and
    `mark` = (x, label) drawn as a dashed vertical line (the step that was kept)."""
    left, right, top, bottom = 60, 150, 24, 40
    x = np.asarray(x, dtype=np.float64)
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in series.values()])
    y_min, y_max = float(min(0.0, np.nanmin(values))), float(np.nanmax(values)) or 1.0
    x_min, x_max = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1

    def u(xs):
        return left + (np.asarray(xs, dtype=np.float64) - x_min) / (x_max - x_min) * (width - left - right)

    def v(ys):
        return top + (1 - (np.asarray(ys, dtype=np.float64) - y_min) / (y_max - y_min or 1)) * (height - top - bottom)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11'>",
             f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
             "fill='none' stroke='#999'/>",
             f"<text x='{left}' y='{height - 8}'>{html.escape(x_label)}: {x_min:g} to {x_max:g}</text>",
             f"<text x='4' y='{top + 10}'>{y_max:.3g}</text><text x='4' y='{height - bottom}'>{y_min:.3g}</text>",
             f"<text x='{left}' y='16'>{html.escape(y_label)}</text>"]
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(u(x), v(ys)))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{points}'/>")
        parts.append(f"<text x='{width - right + 8}' y='{top + 14 + 16 * i}' fill='{colour}'>{html.escape(name)}</text>")
    if mark is not None and x_min <= mark[0] <= x_max:
        at = float(u([mark[0]])[0])
        parts.append(f"<line class='kept' x1='{at:.1f}' x2='{at:.1f}' y1='{top}' y2='{height - bottom}' "
                     "stroke='#000' stroke-dasharray='4 3'/>")
        anchor, x_text = ("end", at - 4) if at > (width - right) * 0.6 else ("start", at + 4)  # clear of the legend
        parts.append(f"<text text-anchor='{anchor}' x='{x_text:.1f}' y='{top + 12}' font-weight='bold'>"
                     f"{html.escape(mark[1])}</text>")
    return "".join(parts) + "</svg>"


def svg_bars(labels: list[str], series: dict[str, np.ndarray], title: str, width: int = 270,
             height: int = 150) -> str:
    """An inline SVG grouped bar chart: one group per label (bin or category), one bar per series."""
    left, top, bottom = 8, 18, 14
    peak = max(float(np.max(s)) for s in series.values()) or 1.0
    slot = (width - 2 * left) / max(1, len(labels))
    bar = slot / (len(series) + 0.5)
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='10'>",
             f"<text x='{left}' y='12' font-weight='bold'>{html.escape(title[:44])}</text>",
             f"<line x1='{left}' x2='{width - left}' y1='{height - bottom}' y2='{height - bottom}' stroke='#999'/>"]
    for i, label in enumerate(labels):
        for j, (name, shares) in enumerate(series.items()):
            h = float(shares[i]) / peak * (height - top - bottom)
            parts.append(f"<rect x='{left + i * slot + j * bar:.1f}' y='{height - bottom - h:.1f}' "
                         f"width='{bar:.1f}' height='{h:.1f}' fill='{COLOURS[j % len(COLOURS)]}'>"
                         f"<title>{html.escape(f'{label}: {name} {float(shares[i]):.3f}')}</title></rect>")
    ends = f"{labels[0]} … {labels[-1]}" if labels else ""
    parts.append(f"<text x='{left}' y='{height - 2}' fill='#555'>{html.escape(ends[:48])}</text>")
    return "".join(parts) + "</svg>"


def legend(names: list[str]) -> str:
    return "<p>" + " ".join(f"<span style='color:{COLOURS[i % len(COLOURS)]}'>■</span> {html.escape(name)}"
                            for i, name in enumerate(names)) + "</p>"
