"""The batch PNG encoder: every image decodes with Pillow to exactly its pixels, grey and RGB."""

import io

import numpy as np
import pytest
from PIL import Image

from gan_core.images.png import encode_batch


@pytest.mark.parametrize("shape, mode", [((5, 8, 8, 1), "L"), ((3, 16, 16, 3), "RGB")])
def test_batch_round_trips_through_pillow(shape, mode):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels[0] = 0  # a flat image compresses to something else than noise: both must decode
    for array, png in zip(pixels, encode_batch(pixels)):
        image = Image.open(io.BytesIO(png))
        assert image.mode == mode and image.size == shape[1:3][::-1]
        assert np.array_equal(np.asarray(image).reshape(array.shape), array)
