"""DiffAugment's translation: what it shifts in at the edges."""

from __future__ import annotations

import pytest
import torch

from gan_core.images.augment import diff_augment, translate
from tests.helpers import tiny_params


def one_dot_on_black(n: int = 64, side: int = 32) -> torch.Tensor:
    images = -torch.ones(n, 1, side, side)  # black in [-1, 1]
    images[:, :, side // 2, side // 2] = 1.0
    return images


def test_reflect_translation_moves_the_image_and_shifts_in_only_its_own_border():
    images = one_dot_on_black()
    shifted = translate(images, torch.Generator().manual_seed(0), pad="reflect")
    assert set(shifted.unique().tolist()) == {-1.0, 1.0}  # black and the dot: nothing mid-grey
    rows, cols = torch.nonzero(shifted[:, 0] == 1.0)[:, 1:].T
    assert len(rows) == len(images)  # each dot kept, once
    offsets = torch.stack([rows - 16, cols - 16])
    assert offsets.abs().max() == 4 and (offsets != 0).any()  # 0.125 of 32 pixels, drawn per image


def test_zero_translation_fills_with_mid_grey_as_diffaugment_does():
    shifted = translate(one_dot_on_black(), torch.Generator().manual_seed(0))
    grey = (shifted == 0.0).flatten(1).any(1)
    assert 0.5 < grey.float().mean() < 1.0  # every image but those drawn with no shift in either axis


def test_the_two_paddings_draw_the_same_shifts():
    images = one_dot_on_black()
    zeros, reflect = (diff_augment(images, torch.Generator().manual_seed(5), 0.25, pad) for pad in ("zeros", "reflect"))
    assert torch.equal(zeros == 1.0, reflect == 1.0)


def test_an_unknown_padding_is_refused_by_name():
    with pytest.raises(ValueError, match="translate_pad"):
        tiny_params(train__translate_pad="wrap")
    with pytest.raises(ValueError, match="'wrap'"):
        translate(one_dot_on_black(), torch.Generator(), pad="wrap")


def test_translation_ratio_bounds_the_shift_and_zero_turns_it_off():
    images = one_dot_on_black()
    dots = diff_augment(images, torch.Generator().manual_seed(1), 0.0, "reflect", 0.0625) == 1.0
    rows, cols = torch.nonzero(dots[:, 0])[:, 1:].T
    assert len(rows) == len(images) and torch.stack([rows - 16, cols - 16]).abs().max() == 2  # 1/16 of 32 pixels
    assert torch.equal(diff_augment(images, torch.Generator(), 0.0, "zeros", 0.0), images)
    cut = diff_augment(images, torch.Generator().manual_seed(2), 0.25, "zeros", 0.0)
    assert ((cut == images) | (cut == 0.0)).all()  # nothing moved: only cutout's mid-grey squares changed pixels
    assert ((cut == 0.0).flatten(1).sum(1) == 64).all()  # one 8x8 square (0.25 of 32) in each image


def test_augmentation_probability_leaves_the_other_images_whole():
    images = one_dot_on_black(n=400)
    some = diff_augment(images, torch.Generator().manual_seed(3), 0.0, "reflect", 0.125, probability=0.3)
    moved = (some != images).flatten(1).any(1)
    # Drawn per image: about 0.3 of 400 augmented, less the few whose shift came out as (0, 0) (1 in 81).
    assert 80 <= int(moved.sum()) <= 160
    assert torch.equal(some[~moved], images[~moved])
    every = diff_augment(images, torch.Generator().manual_seed(3), 0.0, "reflect", 0.125)
    assert torch.equal(every, diff_augment(images, torch.Generator().manual_seed(3), 0.0, "reflect", 0.125, 1.0))
    assert (every != images).flatten(1).any(1).float().mean() > 0.9


def test_augmentation_probability_is_a_share():
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="augment_p"):
            tiny_params(train__augment_p=bad)
