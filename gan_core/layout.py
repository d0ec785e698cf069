"""Where the pipeline reads and writes: the project's folders, the bucket, the caches, version names."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gan_core.config import Params

DEFAULT_BUCKET = "ganforge"


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (the DVC outs of dvc.yaml).

    A run of its own (a deployment run) writes under another root; it still reads the checkout's
    (`project`) raw data, evaluator cache, dvc.lock and git state.
    """

    root: Path = Path(".")
    project: Path | None = None  # None: the root itself (a checkout's own layout)

    def __post_init__(self):
        if self.project is None:
            object.__setattr__(self, "project", self.root)

    def prepared(self, params: Params) -> Path:
        return self.root / "data" / "prepared" / f"{params.prepare.dataset}.npz"

    def model(self, params: Params) -> Path:
        return self.root / "models" / params.prepare.dataset

    def checkpoints(self, params: Params) -> Path:
        return self.root / "checkpoints" / params.prepare.dataset

    def generated(self, params: Params) -> Path:
        # By dataset, as models/: dvc.yaml cannot name the out by generate.name when params.yaml leaves it unset.
        return self.root / "data" / "generated" / params.prepare.dataset

    @property
    def feature_cache(self) -> Path:
        """The evaluator networks, one per training split (git-ignored, rebuilt offline when missing)."""
        return self.project / ".ganforge" / "cache" / "features"

    @property
    def baseline_cache(self) -> Path:
        """Real-data baselines of the evaluators (the real-trained utility classifier's accuracy), by input hash."""
        return self.project / ".ganforge" / "cache" / "baselines"

    def evaluation(self, model_name: str, version: str) -> Path:
        """Metrics and plots of a published model's evaluation: never the checkout's metrics/ and plots/."""
        return self.root / ".ganforge" / "evaluations" / model_name / version

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / "eval.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def raw(self) -> Path:
        """The user's datasets (`dvc add data/raw/NAME`); dvc.yaml's prepare stage depends on all of it."""
        return self.project / "data" / "raw"

    @property
    def lock(self) -> Path:
        return self.project / "dvc.lock"

    def outputs(self, params: Params) -> list[Path]:
        """What the pipeline itself writes: none of it makes the work tree dirty."""
        return [self.lock, self.prepared(params).parent, self.model(params).parent,
                self.checkpoints(params).parent, self.generated(params).parent, self.metrics.parent, self.plots]


def bucket_from_env() -> str:
    return os.environ.get("GANFORGE_BUCKET", DEFAULT_BUCKET)


def model_cache_dir() -> Path:
    return Path(os.environ.get("GANFORGE_CACHE") or Path.home() / ".cache" / "ganforge") / "models"


def card_cache_dir() -> Path:
    return model_cache_dir().parent / "cards"


def default_version(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def grid_file_names(class_names: list[str]) -> list[str]:
    """A safe, distinct file name per class: its name with anything but letters, digits, '-' and '_' replaced."""
    safe = [re.sub(r"[^\w-]+", "_", name, flags=re.ASCII).strip("_") for name in class_names]
    if len(set(safe)) < len(safe) or not all(safe):  # names that differ only in unsafe characters
        safe = [f"{k}-{name}".rstrip("-") for k, name in enumerate(safe)]
    return [f"{name}.png" for name in safe]
