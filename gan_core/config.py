"""Typed parameters: params.yaml parsed and validated in exactly one place."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

PARAMS_FILE = Path("params.yaml")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe_name(value: str) -> str:
    # These name local folders and S3 prefixes: the same rule as gan_core.publication.s3.validate_name.
    if not NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError("use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit, "
                         "no '..')")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


def _class_name(value: str) -> str:
    if not value.strip():
        raise ValueError("a class name must not be empty or blank")
    return value


ClassName = Annotated[str, AfterValidator(_class_name)]


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


def section_error(message: str) -> PydanticCustomError:
    """An error about several keys of a section: its message names them and is shown as it is."""
    return PydanticCustomError("section", message)


class Section(BaseModel):
    # Unknown keys are typos until proven otherwise; NaN/inf are never meaningful here.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PrepareConfig(Section):
    dataset: SafeName = "digits"
    source: str = "bundled:digits"  # "bundled:digits", a folder of images, an .npz or an IDX images file
    test_source: str | None = None  # an official test split: the test part, instead of test_fraction
    resolution: Literal["auto"] | int = "auto"  # side of the square images; auto: smallest power of two holding them
    transform: Literal["pad", "center-crop", "resize"] = "pad"
    validation_fraction: float = Field(0.15, gt=0.0, lt=1.0)  # per class: checkpoint selection and tuning
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)  # per class: the reported metrics only
    seed: int = Field(0, ge=0)
    # Names of classes 0..K-1, over the source's own (folder names, an .npz's class_names); checked
    # against the data's class count when preparing.
    class_names: list[ClassName] | None = None
    # Tables (a .csv, a .parquet or a folder of .parquet files as source): column kind overrides (name -> one of
    # continuous, integer, categorical, boolean, datetime), the utility metric's target column, and the
    # categorical column to condition on (None: the target when it is categorical or boolean, else none).
    # Identifiers and personal data (id, email, name, first_name, last_name, phone, address, text) are generated,
    # never modelled; drop leaves a column out. Inference finds them by name and values; a kind here wins.
    columns: dict[str, Literal["continuous", "integer", "categorical", "boolean", "datetime", "id", "email", "name",
                               "first_name", "last_name", "phone", "address", "text", "drop"]] = {}
    target: str | None = None
    condition: str | None = None

    @field_validator("class_names")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            raise ValueError("class names must be distinct")
        return names

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value):
        if value != "auto" and (value < 8 or value & (value - 1)):
            raise ValueError("must be auto or a power of two >= 8")
        return value

    @model_validator(mode="after")
    def _leaves_training_images(self):
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(f"validation_fraction + test_fraction must be below 1 (got {self.validation_fraction} "
                             f"+ {self.test_fraction}): the rest is the training split")
        return self


class ModelConfig(Section):
    latent_dim: int = Field(64, ge=1)
    mapping_layers: int = Field(2, ge=1)
    mapping_dim: int = Field(128, ge=1)
    g_channels: int = Field(128, ge=1)  # width of the first decoder block; halves per block
    g_norm: Literal["pixel", "batch"] = "pixel"  # G's normalisation: per sample, or BatchNorm as DCGAN's
    grow_kernel: Literal[1, 3] = 3  # the decoder blocks' upsample-and-convolve path: 3x3, or 1x1 (a quarter of the cost)
    refine: bool = True  # a 3x3 convolution after each decoder block's sum
    d_channels: int = Field(64, ge=1)  # width of the first feature layer; doubles per layer
    d_stem: bool = True  # D's first feature layer: a full-resolution 3x3; false: the first strided layer
    d_hidden: int = Field(128, ge=1)
    d_spectral_norm: bool = True  # spectral norm on every D layer; false: plain layers, as DCGAN's
    d_norm: Literal["none", "batch"] = "none"  # BatchNorm on D's strided layers but the first, as DCGAN's
    minibatch_std: bool = True  # D sees the spread of the batch's samples of each class (see models.MinibatchStd)
    conditional: bool = True


class TrainConfig(Section):
    epochs: int = Field(160, ge=1)
    batch_size: int = Field(64, ge=1)
    lr_g: float = Field(6e-4, gt=0.0)
    lr_d: float = Field(6e-4, gt=0.0)
    mapping_lr: float = Field(0.01, gt=0.0, le=1.0)  # the mapping network's layers learn at this times lr_g
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    lr_decay: float = Field(1.0, ge=0.0, le=1.0)  # share of the run, at its end, over which both rates fall linearly to 0
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=0.5)
    r1_gamma: float = Field(0.0, ge=0.0)  # weight of the R1 gradient penalty on real images in D's loss; 0: off
    r1_every: int = Field(16, ge=1)  # steps between R1 evaluations (lazy regularisation), each at this times the weight
    augment: bool = True
    cutout: float = Field(0.25, ge=0.0, lt=1.0)  # side of DiffAugment's cutout square, as a share of the image's
    translate: float = Field(0.125, ge=0.0, lt=0.5)  # DiffAugment's largest shift, as a share of the side; 0: off
    translate_pad: Literal["zeros", "reflect"] = "zeros"  # what DiffAugment's translation shifts in
    augment_p: float = Field(1.0, gt=0.0, le=1.0)  # chance that DiffAugment augments each image; 1: every image
    mode_seeking: float = Field(0.05, ge=0.0)  # weight of the MSGAN diversity term in the G loss; 0: off
    reuse_fake: bool = False  # the G step trains on the D step's generated batch: one G forward a step, not two
    checkpoint_every: int = Field(1000, ge=1)  # steps
    select_every: int = Field(250, ge=0)  # steps between checkpoint-selection evaluations; 0: keep the last step
    select_samples: int = Field(10000, ge=2)  # most generated samples per selection score (at most the training images)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int = Field(1, ge=0)  # torch CPU threads; 0: the cores this process may use that are not busy
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere


class FeaturesConfig(Section):
    """The evaluator network: a small CNN classifier trained on the real training split only."""

    width: int = Field(32, ge=1)  # first convolution's channels; doubles twice
    dim: int = Field(64, ge=2)  # feature vector length (the space of the Frechet distance and k-NN)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0.0)  # peak of a one-cycle schedule
    weight_decay: float = Field(1e-3, ge=0.0)
    seed: int = Field(0, ge=0)


class EvaluateConfig(Section):
    # the real split the metrics compare with: test for the reported numbers, validation to choose settings
    split: Literal["test", "validation"] = "test"
    num_samples: int = Field(5000, ge=10)
    seed: int = Field(1, ge=0)
    grid_rows: int = Field(10, ge=1)  # samples per class in the sample grid
    evaluators: list[str] = ["discriminator", "frechet", "kid", "prdc", "label_consistency", "utility", "cas",
                             "memorisation", "near_twins", "stray_ink", "rejection"]
    knn: int = Field(5, ge=1)  # k of precision / recall / density / coverage
    memorisation_ratio: float = Field(0.5, gt=0.0, le=1.0)
    near_twin_ratio: float = Field(0.5, gt=0.0, le=1.0)  # of the class's median real NN distance


class RejectionConfig(Section):
    enabled: bool = False
    target_acceptance: float = Field(0.5, gt=0.0, le=1.0)
    burn_in: int = Field(10000, ge=1)
    per_class: bool = True  # M and gamma per class (conditional models): keeps the class mix


def class_key(key: object) -> int | str:
    # Flow parameters and JSON give class indices as strings ("3"); a name is any other string.
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise ValueError("a class is an index (0, 1, ...) or a name")
    return int(key) if isinstance(key, str) and key.isdigit() else key


ClassKey = Annotated[int | str, BeforeValidator(class_key)]


class GenerateConfig(Section):
    name: SafeName | None = None  # None: <prepare.dataset>-synthetic (Params fills it in)
    num_samples: int = Field(10000, ge=1)  # with class_counts: their sum (filled in when left out)
    # Samples per class, by index or (when the model's meta.json has class_names) name; None: balanced.
    class_counts: dict[ClassKey, Annotated[int, Field(ge=1)]] | None = None
    truncation: float = Field(1.0, gt=0.0, le=1.0)  # psi of the truncation trick; 1.0: off
    shard_size: int = Field(5000, ge=1)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(500, ge=1)
    rejection: RejectionConfig = RejectionConfig()
    # The dataset card's license: a Hugging Face license id (cc-by-4.0, mit, ...); "other" until someone decides.
    license: str = Field("other", pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    # Publish the shards to S3 after writing them: true, false (local shards only), or auto: when an S3 endpoint
    # is set (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, as `make run` and .ganforge/s3.env set it).
    publish: bool | Literal["auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _num_samples_from_counts(cls, raw):
        counts = raw.get("class_counts") if isinstance(raw, dict) else None
        valid = isinstance(counts, dict) and counts and all(type(v) is int and v >= 1 for v in counts.values())
        if valid and "num_samples" not in raw:
            raw = {**raw, "num_samples": sum(counts.values())}
        return raw

    @field_validator("class_counts")
    @classmethod
    def _some_classes(cls, counts):
        if counts is not None and not counts:
            raise ValueError("give at least one CLASS: COUNT, or leave class_counts out for balanced classes")
        return counts

    @model_validator(mode="after")
    def _counts_add_up(self):
        if self.class_counts is not None and sum(self.class_counts.values()) != self.num_samples:
            raise section_error(f"generate.num_samples is {self.num_samples} but generate.class_counts add up to "
                                f"{sum(self.class_counts.values())}; leave num_samples out or make them agree")
        return self


class GateConfig(Section):
    """What a trained model must reach to become `production`; null: not checked. Metrics of metrics/eval.json."""

    fd_ratio_max: float | None = Field(2.0, gt=0.0)  # FD over the real-real floor
    utility_min: float | None = Field(0.9, ge=0.0)  # classifier accuracy, synthetic-trained over real-trained
    label_consistency_min: float | None = Field(0.9, ge=0.0, le=1.0)
    memorisation_max: float | None = Field(0.02, ge=0.0, le=1.0)  # share of samples nearer a training image
    # Tables (gan_core.tables.evaluate's metrics); utility_min above applies to both kinds.
    quality_min: float | None = Field(0.7, ge=0.0, le=1.0)  # SDMetrics quality score against the test rows
    dcr_ratio_min: float | None = Field(0.9, ge=0.0)  # median distance to closest training record over the test rows'

    def applies_to(self, kind: str) -> dict[str, float | None]:
        """The thresholds that bear on a model of `kind` ("image" or "table"), by key."""
        other = TABLE_ONLY_GATES if kind != "table" else IMAGE_ONLY_GATES
        return {key: value for key, value in self.model_dump().items() if key not in other}


IMAGE_ONLY_GATES = {"fd_ratio_max", "label_consistency_min", "memorisation_max"}
TABLE_ONLY_GATES = {"quality_min", "dcr_ratio_min"}


# The `table:` section: the row GAN's shape and its training knobs.
class TableConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # model
    embedding_dim: int = Field(128, ge=1)  # latent z, as CTGAN
    mapping_layers: int = Field(1, ge=0)  # the seed's mapping network: z (+ conditional vector) -> w
    mapping_dim: int = Field(128, ge=1)
    generator_dims: tuple[int, ...] = (256, 256)  # decoder blocks; each grows the width by its own (residual concat)
    discriminator_dims: tuple[int, ...] = (256, 256)
    # PacGAN: the discriminator judges groups of `pac` rows. 5, not CTGAN's 10: validation utility rose on every
    # one of four seeds of both benchmark tables (penguins 0.25 -> 0.60, anes96 0.52 -> 0.63), quality held.
    pac: int = Field(5, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)  # in the discriminator, as CTGAN
    gumbel_tau: float = Field(0.2, gt=0.0)
    gmm_components: int = Field(10, ge=1)  # most modes per continuous column (Bayesian GMM prunes the rest)
    # training
    batch_size: int = Field(500, ge=1)  # rounded down to a multiple of pac
    steps: int = Field(1000, ge=1)
    max_seconds: float | None = Field(None, gt=0.0)  # wall-clock budget: stop early when spent (not reproducible)
    # A discriminator 10x faster than the generator: with BCE and CTGAN's dropout, at equal rates (CTGAN's 2e-4)
    # the packed D stayed at chance (loss 2 ln 2) on penguins and G drifted on the conditional loss alone;
    # these rates gave the best validation score of the rates tried there.
    lr: float = Field(1e-4, gt=0.0)  # generator
    lr_d: float | None = Field(1e-3, gt=0.0)  # discriminator; None: the same as lr
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-6, ge=0.0)
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    cond_loss_weight: float = Field(1.0, ge=0.0)
    # Real and generated rows per step for the row scorer (d_score): all 500 cost as much as the packed D; with
    # 100, 30 % more steps fit a CPU budget and the validation quality rose on both benchmark tables.
    scorer_rows: int | None = Field(100, ge=1)  # None: the whole batch
    select_every: int = Field(25, ge=0)  # steps between checkpoint-selection scores on validation; 0: the last step
    select_conditional: bool = True  # selection also scores each class's columns against its real rows
    # The latest step scoring within this of the best is kept: 0.01 raised validation utility on both benchmark
    # tables over four seeds (penguins 0.61 -> 0.67, anes96 0.57 -> 0.66; quality within 0.003).
    select_tolerance: float = Field(0.01, ge=0.0)
    select_rows: int = Field(1000, ge=10)  # generated rows per selection score
    checkpoint_every: int = Field(500, ge=1)  # steps between resumable checkpoints

    @model_validator(mode="after")
    def _batch_holds_a_pack(self):
        if self.batch_size < self.pac:
            raise ValueError(f"table.batch_size ({self.batch_size}) must be at least table.pac ({self.pac})")
        return self


class Params(Section):
    prepare: PrepareConfig = PrepareConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    features: FeaturesConfig = FeaturesConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    generate: GenerateConfig = GenerateConfig()
    gate: GateConfig = GateConfig()
    table: TableConfig = TableConfig()  # the row GAN of a table source (model and training); unused for images

    @field_validator("*", mode="before")
    @classmethod
    def _none_is_default(cls, value):
        # An empty YAML section ("train:") parses as None; treat it as "all defaults".
        return {} if value is None else value

    @model_validator(mode="after")
    def _counts_need_classes(self):
        if self.generate.class_counts is not None and not self.model.conditional:
            raise section_error("generate.class_counts needs a class-conditional model (model.conditional is false)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _name_follows_data(cls, raw):
        # Unset, the dataset's name follows its data: a user's own images never publish as digits-synthetic.
        if not isinstance(raw, dict):
            return raw
        generate, prepare = (_as_dict(raw.get(key)) for key in ("generate", "prepare"))
        if not isinstance(generate, dict) or generate.get("name") is not None:
            return raw
        dataset = prepare.get("dataset", PrepareConfig().dataset) if isinstance(prepare, dict) else None
        return {**raw, "generate": {**generate, "name": f"{dataset}-synthetic"}}


def _as_dict(section: object) -> object:
    return section.model_dump() if isinstance(section, BaseModel) else section or {}


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {key}{_did_you_mean(error['loc'])}"
    if error["type"] == "section":
        return error["msg"]
    got = error.get("input")
    if isinstance(got, float) and math.isnan(got):
        got = "nan"
    shown = repr(got) if len(repr(got)) <= 60 else repr(got)[:50] + "..."
    return f"{key}: {error['msg'].removeprefix('Value error, ').lower()} (got {shown})"


def _did_you_mean(loc: tuple) -> str:
    """' (did you mean train.epochs?)' when an unknown key is close to one of its section's fields."""
    section: type[BaseModel] = Params
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        section = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    return f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?)" if close else ""


def parse_params(raw: object, source: str = str(PARAMS_FILE)) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice is an error rather than the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = f": {exc.problem}" if getattr(exc, "problem", None) else ""
        raise ConfigError(f"{path}: not valid YAML{where}{problem}") from None
    return parse_params(raw, str(path))


def override_params(params: Params, overrides: dict[str, object], source: str = "flow parameters") -> Params:
    """Params with dotted keys replaced ({"generate.num_samples": 10}), validated again; None keeps a value."""
    raw = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is not None:
            *sections, key = dotted.split(".")
            node = raw
            for section in sections:
                node = node[section]
            node[key] = value
    return parse_params(raw, source)
