"""The seed's networks: shapes follow the data, true parameter counts, per-sample independence."""

import pytest
import torch

from gan_core.config import ModelConfig
from gan_core.models import DataShape, Discriminator, Generator, count_parameters


@pytest.mark.parametrize("resolution, blocks", [(8, 1), (16, 2), (32, 3), (64, 4)])
def test_decoder_blocks_follow_resolution(resolution, blocks):
    cfg = ModelConfig(latent_dim=8, mapping_dim=16, g_channels=32, d_channels=8, d_hidden=16)
    shape = DataShape(resolution, 3, 10)
    G, D = Generator(cfg, shape), Discriminator(cfg, shape)
    assert len(G.decoder) == blocks
    labels = torch.arange(4) % 10
    images = G(torch.randn(4, 8), labels)
    assert images.shape == (4, 3, resolution, resolution)
    assert images.abs().max() <= 1.0
    assert D(images, labels).shape == (4,)


def test_parameter_count_is_the_sum_of_layers():
    cfg = ModelConfig(latent_dim=4, mapping_layers=1, mapping_dim=8, g_channels=16, conditional=False)
    G = Generator(cfg, DataShape(8, 1, 0))
    # mapping 4*8+8; projection 8*16*16+16*16; deconv 16*16*16+16; grow conv 16*16*9+16;
    # refine conv 16*16*9+16; to_image 16*1*9+1
    expected = (4 * 8 + 8) + (8 * 256 + 256) + (16 * 16 * 16 + 16) + 2 * (16 * 16 * 9 + 16) + (16 * 9 + 1)
    assert count_parameters(G) == expected


def test_a_sample_does_not_depend_on_its_batch():
    cfg = ModelConfig(latent_dim=8, mapping_dim=16, g_channels=16)
    G = Generator(cfg, DataShape(8, 1, 10)).eval()
    z, labels = torch.randn(6, 8), torch.arange(6)
    together = G(z, labels)
    alone = torch.cat([G(z[i:i + 1], labels[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        DataShape(12, 1, 0).num_blocks


@pytest.mark.parametrize("resolution, d_widths, g_widths", [
    (32, [64, 128, 256, 512], [64, 32, 16]),
    (64, [64, 128, 256, 512, 512], [64, 32, 16, 16]),  # capped at 512, not 1,024
])
def test_default_widths_at_32_and_64(resolution, d_widths, g_widths):
    shape = DataShape(resolution, 3, 10)
    D, G = Discriminator(ModelConfig(), shape), Generator(ModelConfig(), shape)
    assert [m.out_channels for m in D.features if isinstance(m, torch.nn.Conv2d)] == d_widths
    assert [block.deconv.out_channels for block in G.decoder] == g_widths
