"""Score a finished Fashion-MNIST training run's EMA generator at some of its checkpoints, on the validation split.

    PREPARED=... FEATURES=... python scripts/checkpoint_curve.py CHECKPOINTS STEP[,STEP...] > curve.jsonl

CHECKPOINTS is a run's checkpoint folder (`checkpoints/fashion-mnist`, holding `step-000031840/` and so on);
each line printed is one step's figures as recipe_screen scores a recipe (FD, precision, recall, stray ink,
memorisation, with validation as the held-out split), so that what training longer buys and costs shows
step by step without training again. `PREPARED` and `FEATURES` as for recipe_screen.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recipe_screen as screen  # noqa: E402
from gan_core.images.data import load_prepared  # noqa: E402
from gan_core.images.sampling import load_model  # noqa: E402


def main(checkpoints: Path, steps: list[int]) -> None:
    torch.set_num_threads(1)
    prepared = load_prepared(Path(os.environ["PREPARED"]))
    reference = screen.validation_reference(prepared.validation.images, prepared.train.images)
    for step in steps:
        # A training checkpoint loads as an exported model does: its own model config, every file's sha256 checked.
        generator = load_model(checkpoints / f"step-{step:09d}").generator
        with torch.no_grad():
            print(json.dumps({"step": step} | screen.score(generator, reference)), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(step) for step in sys.argv[2].split(",")])
