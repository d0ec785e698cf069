"""The headline metrics of several eval.json files (one per training seed) as a Markdown table, with their
spread: `python scripts/seed_table.py results/fashion-mnist/seed-*/eval.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# (key in eval.json, column title, format)
COLUMNS = [
    ("fd_ratio", "FD / floor", "{:.2f}"),
    ("fd_ratio_sd", "its sd over test sets", "{:.2f}"),
    ("kid", "KID", "{:.3f}"),
    ("kid_interval", "KID 95 % interval", "{}"),
    ("kid_floor", "KID floor", "{:.3f}"),
    ("cas", "CAS", "{:.3f}"),
    ("utility", "utility", "{:.3f}"),
    ("label_consistency", "label consistency", "{:.1%}"),
    ("memorisation", "memorisation", "{:.2%}"),
    ("near_twins_ratio", "near-twins / test split's rate", "{:.2f}"),
    ("near_twins_train_ratio", "near-twins / training split's rate", "{:.2f}"),  # 51,000 real images: more twins
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("stray_ink", "stray ink", "{:.1%}"),
    ("d_auc", "D AUC", "{:.3f}"),
]


def cell(metrics: dict, key: str, fmt: str) -> str:
    if key == "kid_interval":
        low, high = metrics.get("kid_low"), metrics.get("kid_high")
        return "-" if low is None else f"{low:.3f} - {high:.3f}"
    value = metrics.get(key)
    return "-" if value is None else fmt.format(value)


def table(paths: list[Path]) -> str:
    runs = [(path, json.loads(path.read_text())) for path in paths]
    lines = ["| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for path, metrics in runs:
        lines.append(f"| {path.parent.name or path.stem} | "
                     + " | ".join(cell(metrics, key, fmt) for key, _, fmt in COLUMNS) + " |")
    spread = []
    for key, _, fmt in COLUMNS:
        values = [m[key] for _, m in runs if isinstance(m.get(key), (int, float))]
        spread.append(f"{fmt.format(min(values))} - {fmt.format(max(values))}" if len(values) > 1 else "-")
    lines.append("| min - max | " + " | ".join(spread) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python scripts/seed_table.py EVAL_JSON [EVAL_JSON ...]")
    print(table([Path(p) for p in sys.argv[1:]]))
