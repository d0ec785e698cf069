"""Evaluation: evaluators registered by name write metrics/eval.json and plots for DVC."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from gan_core.checkpoint import write_json_atomic
from gan_core.config import EvaluateConfig, Params, RejectionConfig
from gan_core.fingerprint import check_model_data as check_model_trained_on
from gan_core.fingerprint import code_version, data_fingerprint
from gan_core.images import metrics as m
from gan_core.images.data import ImageSet, PreparedData, check_disjoint, load_prepared, model_class_names
from gan_core.images.features import FeatureNet, feature_space, load_or_train_feature_net
from gan_core.images.pixels import quantise, to_unit_range
from gan_core.images.sampling import SampleBatch, TrainedModel, fit_to_model, rejection_sample
from gan_core.layout import grid_file_names
from gan_core.rejection import logit_to_score
from gan_core.scores import score_summary, write_score_histogram
from gan_core.shards import stream_positions


@dataclass
class EvalContext:
    model: TrainedModel
    train: ImageSet
    # The real images the metrics compare with, seen by neither training nor the evaluator network: the test
    # split (reported numbers), or the validation split with evaluate.split: validation (choosing settings).
    held_out: ImageSet
    fake: SampleBatch  # images in [-1, 1], generated for `fake.labels`
    plots_dir: Path
    cfg: EvaluateConfig
    rejection: RejectionConfig  # the generate stage's rejection settings, compared by the "rejection" evaluator
    features: FeatureNet
    baseline_cache: Path | None = None  # real-data baselines that every evaluation of this data shares
    # The other held-out split (validation beside test): pooled with held_out only to measure how far
    # fd_ratio would move over other real sets of held_out's size (metrics.fd_ratio_sd).
    other_held_out: ImageSet | None = None

    @cached_property
    def train_features(self) -> np.ndarray:
        return self.features.embed(to_unit_range(self.train.images))[0]

    @cached_property
    def held_out_features(self) -> tuple[np.ndarray, np.ndarray]:
        """Features and predicted classes of the held-out real images."""
        return self.features.embed(to_unit_range(self.held_out.images))

    @cached_property
    def other_held_out_features(self) -> np.ndarray | None:
        other = self.other_held_out
        return None if other is None or not len(other.labels) else self.features.embed(to_unit_range(other.images))[0]

    @cached_property
    def fake_features(self) -> tuple[np.ndarray, np.ndarray]:
        return self.features.embed(self.fake.images)

    @cached_property
    def fd_floor(self) -> float:
        """Frechet distance from the real training images to the test ones (the real-real floor)."""
        return m.frechet_distance(self.train_features, self.held_out_features[0])

    @property
    def like_train(self) -> int:
        """Generated samples compared with the test split: as many as training images, so FD bias matches the floor."""
        return min(len(self.train.labels), len(self.fake.seeds))

    @property
    def compared(self) -> int:
        """Generated samples that Frechet distance and PRDC use: whole training-sized chunks, at least as many as
        test images (51,000 of Fashion-MNIST's 60,000: rejection sampling need not draw the rest)."""
        total, chunk = len(self.fake.seeds), self.like_train
        return min(total, max(chunk * (total // chunk), len(self.held_out.labels)))


BATCH_SIZE = 1000  # samples per generator call while evaluating
Evaluator = Callable[[EvalContext], dict]
EVALUATORS: dict[str, Evaluator] = {}


def register(name: str) -> Callable[[Evaluator], Evaluator]:
    def add(fn: Evaluator) -> Evaluator:
        EVALUATORS[name] = fn
        return fn
    return add


@torch.inference_mode()
def discriminator_logits(model: TrainedModel, data: ImageSet, batch_size: int = 1000) -> np.ndarray:
    out = []
    for start in range(0, len(data.labels), batch_size):
        images = to_unit_range(data.images[start:start + batch_size]).to(model.device)
        labels = torch.as_tensor(data.labels[start:start + batch_size]).to(model.device)
        out.append(model.discriminator(images, labels if model.shape.num_classes else None).float().cpu())
    return torch.cat(out).numpy()


@register("discriminator")
def discriminator_scores(ctx: EvalContext) -> dict:
    """D's probability of "real" on real test and on generated images, and how well it separates them.

    An AUC near 0.5 means the discriminator cannot tell generated digits from unseen real ones.
    """
    real = logit_to_score(discriminator_logits(ctx.model, ctx.held_out))
    fake = logit_to_score(ctx.fake.logits)
    truth = np.r_[np.ones(len(real)), np.zeros(len(fake))]
    auc = roc_auc_score(truth, np.r_[real, fake])
    write_score_histogram(ctx.plots_dir / "d_scores.csv", real, fake)
    return {"d_score_real": score_summary(real), "d_score_fake": score_summary(fake), "d_auc": float(auc)}


@register("frechet")
def frechet(ctx: EvalContext) -> dict:
    """Frechet distance to real test images in the evaluator's feature space, beside the real-real floor.

    The floor is the distance from the real training images to the test ones: what a generator
    that reproduced its training data's distribution exactly would score, finite-sample noise included.
    Generated samples are compared in chunks as large as the training split (same finite-sample
    bias as the floor); `fd` is the mean over the chunks that evaluate.num_samples holds. `fd_ratio_sd`: how far
    `fd_ratio` would move over other real sets as large as the test split (metrics.fd_ratio_sd).
    """
    features, other = ctx.fake_features[0], ctx.other_held_out_features
    fd = chunked_fd(ctx, features)
    spread = None if other is None else m.fd_ratio_sd(fake_chunks(ctx, features), ctx.train_features,
                                                      ctx.held_out_features[0], other, seed=ctx.cfg.seed)
    return {"fd": fd, "fd_floor": ctx.fd_floor, "fd_ratio": fd / ctx.fd_floor, "fd_ratio_sd": spread}


def chunked_fd(ctx: EvalContext, features: np.ndarray) -> float:
    return float(np.mean([m.frechet_distance(chunk, ctx.held_out_features[0])
                          for chunk in fake_chunks(ctx, features)]))


def fake_chunks(ctx: EvalContext, features: np.ndarray) -> list[np.ndarray]:
    """Generated features in whole chunks as large as the training split (what chunked_fd averages over)."""
    n = ctx.like_train
    return [features[start:start + n] for start in range(0, len(features) - n + 1, n)]


@register("prdc")
def precision_recall(ctx: EvalContext) -> dict:
    """Precision, recall, density and coverage against real test images, as many generated as real."""
    real = ctx.held_out_features[0]
    return m.prdc(real, ctx.fake_features[0][:len(real)], ctx.cfg.knn)


class NotApplicable(Exception):
    """An evaluator that cannot measure this model (say, label consistency without labels)."""


def _require_labels(ctx: EvalContext, name: str) -> None:
    if not ctx.train.num_classes or ctx.fake.labels.min() < 0:
        raise NotApplicable(f"{name} needs a class-conditional model and labelled data")


@register("label_consistency")
def label_consistency(ctx: EvalContext) -> dict:
    """How often the evaluator network classifies a generated sample as the class it was generated for.

    Its accuracy on real test images is the reference: a perfect generator scores about that.
    """
    _require_labels(ctx, "label_consistency")
    return {"label_consistency": float((ctx.fake_features[1] == ctx.fake.labels).mean()),
            "evaluator_accuracy": float((ctx.held_out_features[1] == ctx.held_out.labels).mean())}


def _uint8_rows(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 0..255 or float -1..1 images -> flat uint8 rows, generated ones quantised as their PNGs are."""
    if isinstance(images, torch.Tensor):
        images = quantise(images).numpy()
    return images.reshape(len(images), -1)


def _pixels(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """As _uint8_rows, in 0..1."""
    return _uint8_rows(images) / 255.0


@register("utility")
def utility(ctx: EvalContext) -> dict:
    """Held-out accuracy of a logistic regression trained on generated samples only, relative to real-trained."""
    _require_labels(ctx, "utility")
    return m.utility(_pixels(ctx.fake.images), ctx.fake.labels, _pixels(ctx.train.images), ctx.train.labels,
                     _pixels(ctx.held_out.images), ctx.held_out.labels, cached_accuracy(ctx.baseline_cache))


def cached_accuracy(cache_dir: Path | None) -> m.Accuracy:
    """m.classifier_accuracy, kept in `cache_dir` under a sha256 of its inputs and of the metrics code: the
    real-trained baseline of `utility` is the same in every evaluation of a dataset, and on Fashion-MNIST
    (51,000 rows of 1,024 pixels) its fit is half of the evaluator's minutes."""
    if cache_dir is None:
        return m.classifier_accuracy

    def accuracy(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
        digest = hashlib.sha256(code_version("images.metrics").encode())
        for array in (x, y, test_x, test_y):
            digest.update(f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes())
        path = Path(cache_dir) / f"accuracy-{digest.hexdigest()[:32]}.json"
        try:
            return float(json.loads(path.read_text())["accuracy"])
        except (OSError, ValueError, KeyError):  # not there yet, or unreadable: fitted again
            value = m.classifier_accuracy(x, y, test_x, test_y)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"accuracy": value})
            return value

    return accuracy


@register("memorisation")
def memorisation(ctx: EvalContext) -> dict:
    """Share of generated samples much nearer a training image than test ones are (pixel space)."""
    return m.memorisation(_pixels(ctx.fake.images), _pixels(ctx.train.images), _pixels(ctx.held_out.images),
                          ctx.cfg.memorisation_ratio)


@register("stray_ink")
def stray_ink(ctx: EvalContext) -> dict:
    """Share of generated samples that ink pixels the real training images leave blank (metrics.stray_ink)."""
    return m.stray_ink(_uint8_rows(ctx.fake.images), _uint8_rows(ctx.train.images), _uint8_rows(ctx.held_out.images))


@register("kid")
def kernel_inception_distance(ctx: EvalContext) -> dict:
    """KID to the real test images (subsets of up to 1,000, bootstrap 95 % interval) and the real-real floor:
    the training split against the test split, measured alike."""
    real = ctx.held_out_features[0]
    with too_few_rows_not_applicable():
        floor = m.kid(ctx.train_features, real, seed=ctx.cfg.seed)["kid"]
        return m.kid(ctx.fake_features[0], real, seed=ctx.cfg.seed) | {"kid_floor": floor}


@register("cas")
def classification_accuracy_score(ctx: EvalContext) -> dict:
    """Test accuracy of a classifier trained on generated samples only, over the same one trained on the
    real training split (features of the evaluator network; see metrics.cas)."""
    _require_labels(ctx, "cas")
    return m.cas(ctx.fake_features[0], ctx.fake.labels, ctx.train_features, ctx.train.labels,
                 ctx.held_out_features[0], ctx.held_out.labels)


@register("near_twins")
def near_twins(ctx: EvalContext) -> dict:
    """Share of generated samples with a near-twin among the others of their class, against the real test
    images' own share on as many images per class (evaluator features; unlabelled data: one class).

    `near_twins_train_*`: the same against the real training split, on as many samples per class as it
    holds. A test split's rate can rest on a handful of twins (digits: 6 of 269), the training split's on
    several times more, so that repetition shows; the training images are not generated samples'
    neighbours here, only the yardstick of how often real images of a class are that close."""
    with too_few_rows_not_applicable():
        against_test = m.near_twins(ctx.fake_features[0], ctx.fake.labels, ctx.held_out_features[0],
                                    ctx.held_out.labels, ctx.cfg.near_twin_ratio, seed=ctx.cfg.seed)
        against_train = m.near_twins(ctx.fake_features[0], ctx.fake.labels, ctx.train_features, ctx.train.labels,
                                     ctx.cfg.near_twin_ratio, seed=ctx.cfg.seed)
    del against_train["near_twins_by_class"]
    return against_test | {key.replace("near_twins", "near_twins_train", 1): value
                           for key, value in against_train.items()}


@contextmanager
def too_few_rows_not_applicable():
    try:
        yield
    except m.TooFewRows as error:  # a test split of a handful of images: skipped, and listed as skipped
        raise NotApplicable(str(error)) from error


def quality_with_rejection(ctx: EvalContext, target_acceptance: float | None) -> dict:
    """FD, precision and recall vs the test split of the samples drawn with rejection at `target_acceptance`
    (None: off), measured as the frechet and prdc evaluators measure them (`EvalContext.compared` samples)."""
    if target_acceptance is None:  # plain sampling: the context's samples are exactly these
        batch, candidates, features = ctx.fake, len(ctx.fake.seeds), ctx.fake_features[0]
    else:
        settings = ctx.rejection.model_copy(update={"target_acceptance": target_acceptance})
        rule = fit_to_model(ctx.model, settings, ctx.cfg.seed, BATCH_SIZE)
        # The plain samples are the stream's first candidates: those accepted keep their images and features.
        batch, candidates = rejection_sample(ctx.model, rule, ctx.cfg.seed, ctx.compared, BATCH_SIZE,
                                             drawn_before=ctx.fake)
        reused = stream_positions(batch.seeds)
        reused = reused[reused < len(ctx.fake.seeds)]  # accepted in stream order: the reused ones come first
        features, drawn = ctx.fake_features[0][reused], batch.images[len(reused):]
        if len(drawn):
            features = np.concatenate([features, ctx.features.embed(drawn)[0]])
    real = ctx.held_out_features[0]
    quality = m.prdc(real, features[:len(real)], ctx.cfg.knn)
    return {"acceptance": len(batch.seeds) / candidates, "fd": chunked_fd(ctx, features),
            "precision": quality["precision"], "recall": quality["recall"]}


@register("rejection")
def rejection(ctx: EvalContext) -> dict:
    """The same checkpoint with discriminator rejection sampling at generate.rejection.target_acceptance."""
    return {f"drs_{key}": value for key, value in quality_with_rejection(ctx, ctx.rejection.target_acceptance).items()}


# --- plots --------------------------------------------------------------------------------------

def image_grid(images: torch.Tensor, rows: int, columns: int, gap: int = 1) -> np.ndarray:
    """rows * columns images in [-1, 1] (N, C, H, W) -> one uint8 image (H, W[, 3]), `gap` black pixels apart."""
    padded = torch.nn.functional.pad(images[:rows * columns].clamp(-1, 1), (0, gap, 0, gap), value=-1.0)
    pixels = quantise(padded).numpy()
    _, c, h, w = pixels.shape
    grid = pixels.reshape(rows, columns, c, h, w).transpose(0, 3, 1, 4, 2).reshape(rows * h, columns * w, c)
    return grid[..., 0] if c == 1 else grid


def write_image(array: np.ndarray, path: Path, scale: int = 4) -> None:
    image = Image.fromarray(array)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def write_sample_grids(fake: SampleBatch, class_names: list[str], size: int, plots_dir: Path) -> None:
    """plots/samples.png (a row per class) and plots/classes/<class name>.png (size x size samples of each class;
    unlabelled: all.png)."""
    folder = plots_dir / "classes"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if not class_names:
        grid = image_grid(fake.images, size, size)
        write_image(grid, plots_dir / "samples.png")
        write_image(grid, folder / "all.png")  # never an empty DVC out: git keeps no empty folder
        return
    by_class = [fake.images[torch.as_tensor(np.flatnonzero(fake.labels == k))] for k in range(len(class_names))]
    write_image(np.concatenate([image_grid(images, 1, size) for images in by_class]), plots_dir / "samples.png")
    for file_name, images in zip(grid_file_names(class_names), by_class):
        rows = min(size, len(images) // size)
        if rows:
            write_image(image_grid(images, rows, size), folder / file_name)


PIXEL_BINS = 16


def write_marginals(ctx: EvalContext, class_names: list[str], plots_dir: Path) -> None:
    """plots/marginals/ as a table's columns are plotted: shares of pixels per intensity bin and (labelled data)
    of images per class, held-out real vs generated."""
    folder = plots_dir / "marginals"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    real, fake = ctx.held_out.images.reshape(-1), quantise(ctx.fake.images).numpy().reshape(-1)
    edges = np.arange(PIXEL_BINS) * (256 // PIXEL_BINS)
    tables = {"00-pixel.csv": ("pixel", [f"{e}-{e + 256 // PIXEL_BINS - 1}" for e in edges],
                               *(np.bincount(x // (256 // PIXEL_BINS), minlength=PIXEL_BINS) for x in (real, fake)))}
    if class_names:
        tables["01-label.csv"] = ("label", class_names, *(np.bincount(y, minlength=len(class_names))
                                                         for y in (ctx.held_out.labels, ctx.fake.labels)))
    for file_name, (column, values, real_counts, fake_counts) in tables.items():
        with open(folder / file_name, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["column", "value", "real", "generated"])
            writer.writerows([column, value, round(r / real_counts.sum(), 5), round(f / fake_counts.sum(), 5)]
                             for value, r, f in zip(values, real_counts, fake_counts))


# --- the stage ----------------------------------------------------------------------------------

def build_context(model: TrainedModel, prepared: Path, params: Params, plots_dir: Path,
                  feature_cache: Path | None = None, baseline_cache: Path | None = None) -> EvalContext:
    """The data, the evaluator network and evaluate.num_samples generated samples that evaluators share."""
    cfg = params.evaluate
    data = load_prepared(prepared)
    check_model_data(model, prepared, data)
    fake, _ = rejection_sample(model, None, cfg.seed, cfg.num_samples, BATCH_SIZE)
    features = load_or_train_feature_net(data.train, params.features, feature_cache).to(model.device)
    held_out, other = data.splits()[cfg.split], data.splits()["validation" if cfg.split == "test" else "test"]
    return EvalContext(model, data.train, held_out, fake, plots_dir, cfg, params.generate.rejection, features,
                       baseline_cache, other)


def check_model_data(model: TrainedModel, prepared: Path, data: PreparedData) -> None:
    """The prepared file is the one the model was trained on (its fingerprint), and no training
    image is in the validation or test split (by image hash): else the metrics would flatter it."""
    check_model_trained_on(f"the model (step {model.meta.get('step')})", model.meta, prepared,
                           data_fingerprint(prepared))
    check_disjoint(data, prepared)


def evaluate(model: TrainedModel, prepared: Path, params: Params, metrics_path: Path, plots_dir: Path,
             feature_cache: Path | None = None, baseline_cache: Path | None = None) -> dict:
    """Run the evaluators chosen in evaluate.evaluators; write their metrics as one flat JSON, and the plots."""
    unknown = [name for name in params.evaluate.evaluators if name not in EVALUATORS]
    if unknown:
        raise ValueError(f"evaluate.evaluators: unknown {unknown} (known: {sorted(EVALUATORS)})")
    plots_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ctx = build_context(model, prepared, params, plots_dir, feature_cache, baseline_cache)
    _say_time("context (samples, evaluator network)", started)
    metrics = {"parameters": model.meta["parameters"], "step": model.meta["step"],
               # Unlabelled data: no label evaluators, and features learnt without labels; say so.
               "labelled": bool(ctx.train.num_classes), "feature_space": feature_space(ctx.train.num_classes)}
    skipped = []
    for name in params.evaluate.evaluators:
        started = time.monotonic()
        try:
            metrics |= EVALUATORS[name](ctx)
        except NotApplicable:
            # Default evaluators stay valid for unlabelled data: those that need labels step aside.
            skipped.append(name)
        _say_time(name, started)
    if skipped:
        metrics["skipped_evaluators"] = ", ".join(skipped)
    write_sample_grids(ctx.fake, model_class_names(model.meta), params.evaluate.grid_rows, plots_dir)
    write_marginals(ctx, model_class_names(model.meta), plots_dir)
    write_json_atomic(Path(metrics_path), metrics)
    return metrics


def _say_time(what: str, started: float) -> None:
    # Where an evaluation's minutes go, in the stage's log (a lazily built feature counts where first used).
    print(f"evaluate: {what} in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def rejection_table(ctx: EvalContext, targets: list[float]) -> list[dict]:
    """One row per target acceptance (plain sampling first): acceptance, FD, floor, precision, recall."""
    rows = [{"target": target} | quality_with_rejection(ctx, target) for target in [None, *targets]]
    return [row | {"fd_floor": ctx.fd_floor, "fd_vs_plain": row["fd"] / rows[0]["fd"]} for row in rows]


