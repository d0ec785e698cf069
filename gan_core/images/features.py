"""The evaluator network: a small CNN trained only on the real training split, cached by data hash.

Labelled data: it learns the classes. Unlabelled data: it learns which quarter turn an image was given
(self-supervised), so its features still describe the data rather than a random initialisation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from gan_core import checkpoint as ckpt
from gan_core.config import FeaturesConfig
from gan_core.fingerprint import source_digest
from gan_core.images.augment import translate
from gan_core.images.data import ImageSet
from gan_core.images.pixels import to_unit_range
from gan_core.progress import progress_bar

FORMAT = "ganforge-features/2"  # bump when the network or its training changes: old caches no longer match
# The code that decides the trained weights: the network and its loop, the shifts, the pixel scaling. Not the
# whole import closure: a change to, say, checkpoint paths or table code retrained Fashion-MNIST's evaluator (5 min);
# of augment.py only `translate`, which the loop calls (a change to GAN training's DiffAugment retrained it, 13 min).
TRAINING_CODE = ("images.features", "images.augment:translate", "images.pixels")


ROTATIONS = 4  # unlabelled data: the net's targets are the four quarter turns of each image


def feature_space(num_classes: int) -> str:
    """What the features were trained for, as eval.json records it."""
    return "cnn-classes" if num_classes else "cnn-rotation (self-supervised)"


class FeatureNet(nn.Module):
    """Three convolutions, global average pooling, a feature layer, and a linear classifier on top
    (of the classes, or of the ROTATIONS quarter turns for unlabelled data)."""

    def __init__(self, channels: int, num_classes: int, cfg: FeaturesConfig):
        super().__init__()
        w = cfg.width
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
            # Pooled to 2x2, not 1x1: where a stroke is matters to a digit's class.
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * w, cfg.dim), nn.ReLU())
        self.classify = nn.Linear(cfg.dim, num_classes or ROTATIONS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> (features, class logits)."""
        features = self.trunk(images)
        return features, self.classify(features)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, batch_size: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """Features and predicted classes as numpy arrays, computed in batches on the net's device."""
        device = next(self.parameters()).device
        features, predicted = [], []
        for start in range(0, len(images), batch_size):
            f, logits = self(images[start:start + batch_size].to(device).float())
            features.append(f.cpu())
            predicted.append(logits.argmax(1).cpu())
        return torch.cat(features).double().numpy(), torch.cat(predicted).numpy()


def cache_key(train: ImageSet, cfg: FeaturesConfig) -> str:
    """sha256 of the training images, their labels, the net's settings, FORMAT and the code that trains it
    (TRAINING_CODE): a change there trains a new evaluator."""
    code = source_digest(TRAINING_CODE)
    digest = hashlib.sha256(f"{FORMAT}|{code}|{json.dumps(cfg.model_dump(), sort_keys=True)}|{train.images.shape}"
                            .encode())
    digest.update(np.ascontiguousarray(train.images).tobytes())
    digest.update(np.ascontiguousarray(train.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def train_feature_net(train: ImageSet, cfg: FeaturesConfig) -> tuple[FeatureNet, dict]:
    """Fit the classifier on the real training split, on the CPU, from a fixed seed: the same data gives the same net.

    On one thread: sums split across threads round differently, and the metrics of runs with
    different `train.threads` should be measured by the same network.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
            return _fit(train, cfg)
    finally:
        torch.set_num_threads(threads)


def _fit(train: ImageSet, cfg: FeaturesConfig) -> tuple[FeatureNet, dict]:
    torch.manual_seed(cfg.seed)
    net = FeatureNet(train.channels, train.num_classes, cfg)
    images, labels = to_unit_range(train.images), torch.as_tensor(train.labels)
    targets = _classes if train.num_classes else _rotations
    noise = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(labels) // cfg.batch_size)
    # Annealed to zero: the final weights settle instead of ending on one noisy step.
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    bar = progress_bar(steps, "evaluator network")
    for _ in range(cfg.epochs):
        order = torch.randperm(len(labels), generator=noise)
        for start in range(0, len(order), cfg.batch_size):
            index = order[start:start + cfg.batch_size]
            # Shifts of a pixel keep the classifier from keying on exact pixel positions of 1,257 images.
            shifted = translate(images[index] + 1, noise) - 1  # shifted-in pixels are background
            inputs, wanted = targets(shifted, labels[index], noise)
            _, logits = net(inputs)
            loss = F.cross_entropy(logits, wanted)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            bar.update(1)
    bar.close()
    net.eval()
    inputs, wanted = targets(images, labels, None)
    _, predicted = net.embed(inputs)
    return net, {"trained": True, "feature_space": feature_space(train.num_classes),
                 "train_accuracy": float((predicted == wanted.numpy()).mean())}


def _classes(images: torch.Tensor, labels: torch.Tensor, noise) -> tuple[torch.Tensor, torch.Tensor]:
    return images, labels


def _rotations(images: torch.Tensor, labels: torch.Tensor,
               noise: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images turned by quarter turns and labelled by the turn (RotNet, Gidaris et al. 2018): telling the
    turns apart takes features of the images' shapes and strokes, which is what FD and PRDC compare.
    With `noise`, one random turn per image (a step costs what a labelled one does); without, all four."""
    every = torch.stack([torch.rot90(images, turns, dims=(2, 3)) for turns in range(ROTATIONS)])
    if noise is None:
        return every.flatten(0, 1), torch.arange(ROTATIONS).repeat_interleave(len(images))
    turns = torch.randint(ROTATIONS, (len(images),), generator=noise)
    return every[turns, torch.arange(len(images))], turns


def load_or_train_feature_net(train: ImageSet, cfg: FeaturesConfig, cache_dir: Path | None) -> FeatureNet:
    """The evaluator for this training split: from `cache_dir/<key>/` if there, else trained and cached there."""
    if not cache_dir:
        return train_feature_net(train, cfg)[0]
    key = cache_key(train, cfg)
    folder = Path(cache_dir) / key[:16]
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Seeds, experiments and DDP ranks started together need the same evaluator: one trains it (minutes on
    # Fashion-MNIST), the others wait here and load it.
    with FileLock(folder.with_name(f".{folder.name}.lock")):
        net = _load_cached(folder, key, train, cfg)
        if net is None:
            net, info = train_feature_net(train, cfg)
            # Also safe where the lock is not (a shared file system that ignores it): one copy is kept.
            ckpt.save_if_absent(folder, {"features": net.state_dict()},
                                {"format": FORMAT, "key": key, "config": cfg.model_dump(), **info})
    return net


def _load_cached(folder: Path, key: str, train: ImageSet, cfg: FeaturesConfig) -> FeatureNet | None:
    if not (folder / ckpt.META_FILE).is_file():
        return None
    try:
        meta = ckpt.read_meta(folder)
        if meta.get("format") == FORMAT and meta.get("key") == key:
            net = FeatureNet(train.channels, train.num_classes, cfg)
            net.load_state_dict(ckpt.load_tensors(folder, "features"))
            return net.eval()
    except ckpt.CheckpointError:
        shutil.rmtree(folder, ignore_errors=True)  # a corrupt cache entry is rebuilt
    return None
