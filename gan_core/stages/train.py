"""Train stage: prepared data -> models/<dataset>/, its curves in plots/."""

from __future__ import annotations

from gan_core.config import Params
from gan_core.layout import Layout
from gan_core.train import train


def run_train(params: Params, layout: Layout = Layout(), resume: bool = False, progress: bool = True) -> dict:
    return train(params, layout.prepared(params), layout.model(params), checkpoint_dir=layout.checkpoints(params),
                 loss_log=layout.plots / "losses.csv", selection_log=layout.plots / "selection.csv",
                 feature_cache=layout.feature_cache, resume=resume, progress=progress)
