"""Seconds and peak memory of every array evaluator at Fashion-MNIST's size: 60,000 training, 10,000 test (and
9,000 validation: 0.9 of test) and 60,000 generated 32x32 grey images of 10 classes (synthetic: a smooth template
per class plus noise).

`python scripts/eval_cost.py [generated training test [evaluator ...]]` (defaults 60000 60000 10000, every
evaluator). One torch thread.
The evaluator network is left untrained (its cost does not depend on its weights; its training is timed by its
own progress bar). `discriminator` and `rejection` need a trained GAN: their cost is its forward passes, not
measured here. Peak memory per evaluator is what tracemalloc sees (numpy, scipy and sklearn buffers) above the
inputs; the process's peak resident memory is printed at the end.
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc

import numpy as np
import torch

from gan_core.config import Params
from gan_core.images.data import ImageSet
from gan_core.images.evaluate import EVALUATORS, EvalContext
from gan_core.images.features import FeatureNet
from gan_core.images.sampling import SampleBatch

SIDE, CLASSES = 32, 10
SKIPPED = ("discriminator", "rejection")


def synthetic_images(count: int, templates: np.ndarray, rng: np.random.Generator) -> ImageSet:
    labels = np.arange(count) % CLASSES
    noise = rng.normal(0, 40, (count, 1, SIDE, SIDE))
    return ImageSet(np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels.astype(np.int64))


def build(generated: int, training: int, test: int) -> EvalContext:
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (CLASSES, 1, SIDE // 8, SIDE // 8))
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)
    train, held_out = synthetic_images(training, templates, rng), synthetic_images(test, templates, rng)
    validation = synthetic_images(test * 9 // 10, templates, rng)
    fake = synthetic_images(generated, templates, rng)
    images = torch.as_tensor(fake.images, dtype=torch.float32) / 127.5 - 1
    batch = SampleBatch(np.arange(generated), images, fake.labels, np.zeros(generated), np.zeros(generated))
    params = Params.model_validate({"evaluate": {"num_samples": generated}})
    torch.manual_seed(0)
    net = FeatureNet(1, CLASSES, params.features).eval()
    return EvalContext(None, train, held_out, batch, None, params.evaluate, params.generate.rejection, net,
                       other_held_out=validation)


def timed(label: str, run) -> None:
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label:<22} {seconds:8.1f} s  {peak / 2**20:8.0f} MiB", flush=True)


def main(generated: int, training: int, test: int, names: list[str]) -> None:
    torch.set_num_threads(1)
    ctx = build(generated, training, test)
    print(f"{generated} generated, {training} training, {test} test images, {SIDE}x{SIDE} grey")
    timed("features (embedding)", lambda: (ctx.train_features, ctx.held_out_features, ctx.fake_features))
    total = time.perf_counter()
    for name, evaluator in EVALUATORS.items():
        if name not in SKIPPED and (not names or name in names):
            timed(name, lambda evaluator=evaluator: evaluator(ctx))
    print(f"all of them: {time.perf_counter() - total:.0f} s; not timed: {', '.join(SKIPPED)} (need a trained GAN); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    sizes = [int(arg) for arg in sys.argv[1:4]] or [60000, 60000, 10000]
    main(*sizes, sys.argv[4:])
