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

from gan_core.card import (
    CardSources,
    md_text,
    metrics_html,
    metrics_markdown,
    not_the_training_data,
    page,
    provenance_markdown,
    read_csv_text,
    size_category,
    summary_line,
    svg_chart,
    trained_on,
    verdict_html,
    verdict_markdown,
)
from gan_core.images.data import ImageSet, load_prepared
from gan_core.loader import png_bytes
from gan_core.verdict import Verdict, verdict

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
    # Real images only from the data this model was trained on: a fetched model's card on a checkout
    # prepared from other data compares nothing with it (no memorisation check against the wrong set).
    splits = _real_splits(sources.prepared) if trained_on(sources.model_dir, sources.prepared) else None
    names = class_names(sources.model_dir, sorted(generated.images))
    result = verdict(sources.manifest.get("metrics") or {}, sources.gate, "image")
    readme, preview, report = (out_dir / name for name in CARD_FILES)
    readme.write_text(card_markdown(sources, generated, names, result))
    _labelled_grid(generated.images, names).save(preview)
    report.write_text(report_html(sources, generated, names, splits, result))
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


def card_markdown(sources: CardSources, generated: Generated, names: dict[int, str], result: Verdict) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    m = sources.manifest
    data = DatasetCardData(license=sources.license, size_categories=[size_category(m["sample_count"])],
                           pretty_name=f"{m['name']} {m['version']}", tags=["synthetic", "gan", "image"],
                           task_categories=["image-classification"],
                           dataset_info={"features": _features(generated.schema, names),
                                         "splits": [{"name": "train", "num_examples": m["sample_count"]}]})
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{_markdown_body(m, sources.uri, names, result)}"))


def _markdown_body(m: dict, uri: str, names: dict[int, str], result: Verdict) -> str:
    local = f"downloads/{m['name']}/{m['version']}"
    lines = [f"# {m['name']} {m['version']}", "", *verdict_markdown(result),
             f"{m['sample_count']} synthetic images generated by a GAN; classes: "
             f"{', '.join(md_text(names[k]) for k in sorted(names))}.", "",
             "![preview: one row per class](preview.png)", "",
             "`report.html` beside this file: the verdict, real and generated images side by side, the training "
             "curves, discriminator scores and nearest training images, on one self-contained page.", "",
             *provenance_markdown(m), "## Metrics", "", *metrics_markdown(m.get("metrics") or {}),
             "## How to load it", "", "```python", "import pandas as pd",
             f"frame = pd.read_parquet('{uri}')  # the S3 environment of `source .ganforge/s3.env`", "",
             f"# after `ganforge download {m['name']} --version {m['version']} --to downloads`:",
             "from datasets import load_dataset",
             f"ds = load_dataset('parquet', data_files='{local}/part-*.parquet', split='train')",
             "```", ""]
    return "\n".join(lines)


# --- report.html: the verdict, real beside generated, charts, then every metric folded away ---

def report_html(sources: CardSources, generated: Generated, names: dict[int, str],
                splits: tuple[ImageSet, ImageSet] | None, result: Verdict) -> str:
    m, labels = sources.manifest, sorted(generated.images)
    if splits is None:
        missing = f"<p>{html.escape(not_the_training_data(sources.prepared))}</p>"
        real = {}
        scores = neighbours = missing
    else:
        train, heldout = splits
        real = _real_by_class(heldout, labels)
        scores = _score_histogram(_heldout_scores(sources.model_dir, heldout), generated.d_scores)
        neighbours = _neighbours(generated.images, train)
    body = [summary_line(m, "images"), verdict_html(result),
            "<h2>Real (test split) and generated, per class</h2>", _class_grids(real, generated.images, names),
            "<h2>Training curves</h2>", _training_curves(sources.curves, _kept_step(sources.model_dir)),
            "<h2>Discriminator scores (probability of real)</h2>", scores,
            "<h2>Nearest training image (pixel L2): the memorisation check</h2>", neighbours,
            "<h2>Metrics</h2>", metrics_html(m.get("metrics") or {})]
    return page(f"{m['name']} {m['version']}", body)


def _img(image: Image.Image, alt: str) -> str:
    return f"<img src='{_data_uri(image)}' alt='{html.escape(alt)}'>"


def _class_grids(real: dict[int, list[np.ndarray]], fake: dict[int, list[np.ndarray]], names: dict[int, str]) -> str:
    rows = ["<table><tr><th>class</th><th>real (test split)</th><th>generated</th></tr>"]
    for label in sorted(fake):
        real_cell = _img(_grid([real[label]]), f"real {names[label]}") if real.get(label) else "not shown"
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


def _kept_step(model_dir: Path) -> int | None:
    """The training step whose weights the model holds (checkpoint selection's pick)."""
    try:
        step = json.loads((Path(model_dir) / "meta.json").read_text()).get("step")
    except (OSError, ValueError):
        return None
    return int(step) if isinstance(step, (int, float)) else None


def _training_curves(curves: dict[str, str], kept: int | None) -> str:
    """The model's own curves: the selection curve with the kept step marked, then the losses."""
    losses, selection = read_csv_text(curves.get("losses.csv")), read_csv_text(curves.get("selection.csv"))
    parts = []
    if selection:
        series = {k: v for k, v in selection.items() if k != "step"}
        at = {int(s): float(v) for s, v in zip(selection["step"], next(iter(series.values())))} if series else {}
        mark = (kept, f"kept: step {kept}" + (f", FD {at[kept]:.3g}" if kept in at else "")) if kept else None
        parts.append(svg_chart(selection["step"], series, "step",
                               "Frechet distance to the validation split (checkpoint selection)", mark=mark))
    if losses:
        parts.append(svg_chart(losses["step"], {k: v for k, v in losses.items() if k != "step"}, "step", "loss"))
    return "".join(parts) or "<p>This model was published without its training curves.</p>"
