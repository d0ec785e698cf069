"""Real test images beside generated ones, a row per class, as one PNG for a person to compare by eye:
`python scripts/real_vs_generated.py MODEL_DIR PREPARED.npz OUT.png [PER_CLASS]`.

Left block: the first PER_CLASS test images of each class; right block: PER_CLASS samples of that class
(seed 0, as `ganforge generate` draws them). The same pixels a published PNG would hold on both sides.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from gan_core.images.data import load_prepared
from gan_core.images.evaluate import image_grid, write_image
from gan_core.images.pixels import to_unit_range
from gan_core.images.sampling import load_model, sample_images

GAP = 4  # white columns between the real and the generated block


def side_by_side(model_dir: Path, prepared: Path, per_class: int = 10) -> np.ndarray:
    test = load_prepared(prepared).test
    classes = range(test.num_classes)
    samples = sample_images(load_model(model_dir), class_counts={k: per_class for k in classes}, seed=0)
    rows = []
    for k in classes:
        real = to_unit_range(test.images[np.flatnonzero(test.labels == k)[:per_class]])
        fake = to_unit_range(samples.images[samples.labels == k])
        rows.append(np.concatenate([image_grid(real, 1, per_class), np.full((real.shape[-2] + 1, GAP) +
                                    ((3,) if real.shape[1] == 3 else ()), 255, np.uint8), image_grid(fake, 1, per_class)],
                                   axis=1))
    return np.concatenate(rows)


if __name__ == "__main__":
    model, data, out = map(Path, sys.argv[1:4])
    torch.set_num_threads(1)
    write_image(side_by_side(model, data, int(sys.argv[4]) if len(sys.argv) > 4 else 10), out)
