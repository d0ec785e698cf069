"""A published dataset version's card: README.md (Hugging Face YAML header), preview.png, report.html."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from gan_core.card import CardSources, markdown_table_html, metrics_table, provenance_and_quality, size_category
from gan_core.images.data import ImageSet, load_prepared
from gan_core.loader import png_bytes

# The card lives in a `_card/` sub-folder: Parquet readers skip only `_`/`.` names, and a README.md
# beside the shards makes `pandas.read_parquet(version folder)` fail ("Could not read schema").
CARD_FOLDER = "_card"
CARD_FILES = ("README.md", "preview.png", "report.html")
PER_CLASS = 10  # images per class in the grids
NEIGHBOURS = 6  # generated images shown beside their nearest training image
CELL = 32  # smallest cell side in pixels: 8x8 digits are upscaled to stay visible


@dataclass(frozen=True)
class Generated:
    images: dict[int, list[np.ndarray]]  # label -> the first PER_CLASS images (H, W[, C]) of that label
    d_scores: np.ndarray  # every row's discriminator probability of "real"
    schema: dict[str, str]  # column -> Arrow type


def write_card(out_dir: Path, sources: CardSources) -> list[Path]:
    """Write the card files into out_dir and return their paths (in CARD_FILES order)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = read_generated(sources.shard_paths)
    # A worker without the prepared data (a model fetched from S3) still gets a card, without real images.
    train, heldout = _real_splits(sources.prepared) if Path(sources.prepared).is_file() else (None, None)
    names = class_names(sources.model_dir, sorted(generated.images))
    readme, preview, report = (out_dir / name for name in CARD_FILES)
    readme.write_text(card_markdown(sources, generated, names))
    _labelled_grid(generated.images, names).save(preview)
    report.write_text(report_html(sources, generated, names, train, heldout))
    return [readme, preview, report]


# --- inputs ---------------------------------------------------------------------------------

def read_generated(shard_paths: list[Path]) -> Generated:
    """Every row's d_score, and the first PER_CLASS images of each label (decoding stops once all are found)."""
    files = [pq.ParquetFile(path) for path in shard_paths]
    columns = [f.read(columns=["label", "d_score"]) for f in files]
    labels = np.unique(np.concatenate([c.column("label").to_numpy() for c in columns]))
    return Generated(_first_images(files, [int(label) for label in labels]),
                     np.concatenate([c.column("d_score").to_numpy() for c in columns]),
                     {f.name: str(f.type) for f in files[0].schema_arrow})


def _first_images(files: list[pq.ParquetFile], labels: list[int]) -> dict[int, list[np.ndarray]]:
    images: dict[int, list[np.ndarray]] = {label: [] for label in labels}
    for file in files:
        for batch in file.iter_batches(batch_size=1024, columns=["image", "label"]):
            for png, label in zip(png_bytes(batch.column("image")).to_pylist(), batch.column("label").to_pylist()):
                if len(images[label]) < PER_CLASS:
                    images[label].append(np.asarray(Image.open(io.BytesIO(png))))
            if all(len(kept) == PER_CLASS for kept in images.values()):
                return images
    return images


def _real_splits(prepared: Path) -> tuple[ImageSet, ImageSet]:
    """(training split, held-out split): the held-out images are the test split, as in reported metrics."""
    data = load_prepared(prepared)
    return data.train, data.test


def class_names(model_dir: Path, labels: list[int]) -> dict[int, str]:
    """Label -> name, from the model's meta.json `class_names` when it has them, else the index."""
    try:
        names = json.loads((Path(model_dir) / "meta.json").read_text()).get("class_names") or []
    except (OSError, ValueError):
        names = []
    return {label: (names[label] if 0 <= label < len(names) else str(label)) if label >= 0 else "unconditional"
            for label in labels}


def _hwc(images: np.ndarray) -> list[np.ndarray]:
    """(N, C, H, W) uint8 -> N arrays as PIL reads them: (H, W) grey or (H, W, 3)."""
    return [image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0) for image in images]


def _real_by_class(data: ImageSet, labels: list[int]) -> dict[int, list[np.ndarray]]:
    return {label: _hwc(data.images[data.labels == label][:PER_CLASS]) if label >= 0
            else _hwc(data.images[:PER_CLASS]) for label in labels}


# --- images ---------------------------------------------------------------------------------

def _grid(rows: list[list[np.ndarray]], gap: int = 2) -> Image.Image:
    """One image per cell, upscaled (nearest) to at least CELL pixels, rows top to bottom."""
    first = next(image for row in rows for image in row)
    side = first.shape[0] * max(1, CELL // first.shape[0])
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (columns * (side + gap) + gap, len(rows) * (side + gap) + gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            cell = Image.fromarray(image).convert("RGB").resize((side, side), Image.NEAREST)
            grid.paste(cell, (gap + c * (side + gap), gap + r * (side + gap)))
    return grid


def _labelled_grid(images: dict[int, list[np.ndarray]], names: dict[int, str], label_width: int = 90) -> Image.Image:
    """preview.png: one row per class, its name on the left."""
    labels = sorted(images)
    grid = _grid([images[label] for label in labels])
    canvas = Image.new("RGB", (grid.width + label_width, grid.height), (255, 255, 255))
    canvas.paste(grid, (label_width, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    row_height = grid.height / max(1, len(labels))
    for i, label in enumerate(labels):
        draw.text((4, int(i * row_height + row_height / 2) - 6), names[label][:14], fill=(0, 0, 0), font=font)
    return canvas


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def nearest_training(generated: list[np.ndarray], train: ImageSet) -> list[tuple[np.ndarray, float]]:
    """For each generated image, the training image nearest in pixels (L2) and that distance."""
    pixels = train.images.reshape(len(train.images), -1).astype(np.float64)
    found = []
    for image in generated:
        chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        distances = np.linalg.norm(pixels - chw.reshape(1, -1).astype(np.float64), axis=1)
        best = int(np.argmin(distances))
        found.append((_hwc(train.images[best:best + 1])[0], float(distances[best])))
    return found


# --- README.md ------------------------------------------------------------------------------


def _features(schema: dict[str, str], names: dict[int, str]) -> list[dict]:
    hf_types = {"int64": "int64", "int32": "int32", "float": "float32", "double": "float64", "string": "string"}
    features = []
    for column, arrow_type in schema.items():
        if column == "image":
            dtype = "image"
        elif column == "label" and any(label >= 0 for label in names):
            dtype = {"class_label": {"names": {str(k): v for k, v in sorted(names.items()) if k >= 0}}}
        else:
            dtype = hf_types.get(arrow_type, arrow_type)
        features.append({"name": column, "dtype": dtype})
    return features


def card_markdown(sources: CardSources, generated: Generated, names: dict[int, str]) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    m = sources.manifest
    data = DatasetCardData(license=sources.license, size_categories=[size_category(m["sample_count"])],
                           pretty_name=f"{m['name']} {m['version']}", tags=["synthetic", "gan", "image"],
                           task_categories=["image-classification"],
                           dataset_info={"features": _features(generated.schema, names),
                                         "splits": [{"name": "train", "num_examples": m["sample_count"]}]})
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{_markdown_body(m, sources.uri, names)}"))


def _markdown_body(m: dict, uri: str, names: dict[int, str]) -> str:
    local = f"downloads/{m['name']}/{m['version']}"
    lines = [f"# {m['name']} {m['version']}", "",
             f"{m['sample_count']} synthetic images generated by a GAN; classes: "
             f"{', '.join(names[k] for k in sorted(names))}.", "",
             "![preview: one row per class](preview.png)", "",
             "`report.html` beside this file: real and generated images side by side, discriminator scores, "
             "nearest training images and training curves, on one self-contained page.", "",
             *provenance_and_quality(m),
             "## How to load it", "", "```python", "import pandas as pd",
             f"frame = pd.read_parquet('{uri}')  # the S3 environment of `source .ganforge/s3.env`", "",
             f"# after `ganforge download {m['name']} --version {m['version']} --to downloads`:",
             "from datasets import load_dataset",
             f"ds = load_dataset('parquet', data_files='{local}/part-*.parquet', split='train')",
             "```", ""]
    return "\n".join(lines)


# --- report.html ----------------------------------------------------------------------------

# Written on window load: the test (and a curious reader) can see that every image decoded.
LOADED_SCRIPT = ("<script>window.addEventListener('load', function () { var all = document.images, n = 0;"
                 " for (var i = 0; i < all.length; i++) { if (all[i].complete && all[i].naturalWidth > 0) n++; }"
                 " document.body.setAttribute('data-images-loaded', n);"
                 " document.body.setAttribute('data-images-total', all.length); });</script>")
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:middle}img{image-rendering:pixelated}")


def report_html(sources: CardSources, generated: Generated, names: dict[int, str],
                train: ImageSet | None, heldout: ImageSet | None) -> str:
    m, labels = sources.manifest, sorted(generated.images)
    title = html.escape(f"{m['name']} {m['version']}")
    if train is None or heldout is None:
        missing = f"<p>The prepared data ({html.escape(str(sources.prepared))}) was not available here.</p>"
        real_sections = [_class_grids({}, generated.images, names), missing, missing]
    else:
        real_sections = [_class_grids(_real_by_class(heldout, labels), generated.images, names),
                         _score_histogram(_heldout_scores(sources.model_dir, heldout), generated.d_scores),
                         _neighbours(generated.images, train)]
    body = [f"<h1>{title}</h1>",
            f"<p>{m['sample_count']} samples, acceptance rate {m.get('acceptance_rate', 1.0):.3f}, model "
            f"<code>{html.escape(str(m.get('model_uri') or 'local'))}</code></p>",
            "<h2>Metrics</h2>", markdown_table_html(metrics_table(m.get("metrics") or {})),
            "<h2>Real (test split) and generated, per class</h2>", real_sections[0],
            "<h2>Discriminator scores (probability of real)</h2>", real_sections[1],
            "<h2>Nearest training image (pixel L2): the memorisation check</h2>", real_sections[2],
            "<h2>Training curves</h2>", _training_curves(sources.plots_dir)]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
            f"{LOADED_SCRIPT}</head><body>{''.join(body)}</body></html>\n")


def _img(image: Image.Image, alt: str) -> str:
    return f"<img src='{_data_uri(image)}' alt='{html.escape(alt)}'>"


def _class_grids(real: dict[int, list[np.ndarray]], fake: dict[int, list[np.ndarray]], names: dict[int, str]) -> str:
    rows = ["<table><tr><th>class</th><th>real (test split)</th><th>generated</th></tr>"]
    for label in sorted(fake):
        real_cell = _img(_grid([real[label]]), f"real {names[label]}") if real.get(label) else "none"
        rows.append(f"<tr><td>{html.escape(names[label])}</td><td>{real_cell}</td>"
                    f"<td>{_img(_grid([fake[label]]), f'generated {names[label]}')}</td></tr>")
    return "".join(rows) + "</table>"


def _heldout_scores(model_dir: Path, heldout: ImageSet) -> np.ndarray:
    from gan_core.images.evaluate import discriminator_logits
    from gan_core.images.sampling import load_model
    from gan_core.rejection import logit_to_score

    return logit_to_score(discriminator_logits(load_model(model_dir, "cpu"), heldout))


def _score_histogram(real: np.ndarray, generated: np.ndarray, bins: int = 20) -> str:
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    share = {f"real test split ({len(real)})": np.histogram(real, edges)[0] / max(1, len(real)),
             f"generated ({len(generated)})": np.histogram(generated, edges)[0] / max(1, len(generated))}
    return svg_chart(centres, share, "discriminator score", "share of images")


def _neighbours(images: dict[int, list[np.ndarray]], train: ImageSet) -> str:
    picks = [image for label in sorted(images) for image in images[label][:1]][:NEIGHBOURS]
    rows = ["<table><tr><th>generated</th><th>nearest training image</th><th>pixel L2</th></tr>"]
    for image, (nearest, distance) in zip(picks, nearest_training(picks, train)):
        rows.append(f"<tr><td>{_img(_grid([[image]]), 'generated')}</td>"
                    f"<td>{_img(_grid([[nearest]]), 'nearest training image')}</td><td>{distance:.1f}</td></tr>")
    return "".join(rows) + "</table>"


def _read_csv(path: Path) -> dict[str, np.ndarray] | None:
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, ndmin=1)
    except (OSError, ValueError):
        return None
    return {name: np.atleast_1d(table[name]) for name in table.dtype.names} if table.size else None


def _training_curves(plots_dir: Path) -> str:
    losses, selection = _read_csv(plots_dir / "losses.csv"), _read_csv(plots_dir / "selection.csv")
    parts = []
    if losses:
        parts.append(svg_chart(losses["step"], {k: v for k, v in losses.items() if k != "step"}, "step", "loss"))
    if selection:
        parts.append(svg_chart(selection["step"], {k: v for k, v in selection.items() if k != "step"}, "step",
                               "Frechet distance (checkpoint selection)"))
    return "".join(parts) or "<p>No training logs beside this model (plots/losses.csv, plots/selection.csv).</p>"


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def svg_chart(x: np.ndarray, series: dict[str, np.ndarray], x_label: str, y_label: str,
              width: int = 640, height: int = 260) -> str:
    """An inline SVG line chart (no script, no fonts fetched): one polyline per series, a legend."""
    left, right, top, bottom = 60, 150, 24, 40
    x = np.asarray(x, dtype=np.float64)
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in series.values()])
    y_min, y_max = float(min(0.0, np.nanmin(values))), float(np.nanmax(values)) or 1.0
    x_min, x_max = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1

    def px(xs, ys):
        u = left + (xs - x_min) / (x_max - x_min) * (width - left - right)
        v = top + (1 - (ys - y_min) / (y_max - y_min or 1)) * (height - top - bottom)
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(u, v))

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11'>",
             f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
             "fill='none' stroke='#999'/>",
             f"<text x='{left}' y='{height - 8}'>{html.escape(x_label)}: {x_min:g} to {x_max:g}</text>",
             f"<text x='4' y='{top + 10}'>{y_max:.3g}</text><text x='4' y='{height - bottom}'>{y_min:.3g}</text>",
             f"<text x='{left}' y='16'>{html.escape(y_label)}</text>"]
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' "
                     f"points='{px(x, np.asarray(ys, dtype=np.float64))}'/>")
        parts.append(f"<text x='{width - right + 8}' y='{top + 14 + 16 * i}' fill='{colour}'>{html.escape(name)}</text>")
    return "".join(parts) + "</svg>"
