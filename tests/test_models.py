"""The seed's networks: shapes follow the data, true parameter counts, per-sample independence."""

import pytest
import torch

from gan_core.config import ModelConfig
from gan_core.models import DataShape, Discriminator, Generator, MinibatchStd, count_parameters


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


def test_minibatch_std_tells_a_group_of_copies_from_a_diverse_group():
    layer = MinibatchStd(group=4).train()
    diverse, copies = torch.randn(8, 3, 4, 4), torch.randn(1, 3, 4, 4).expand(8, 3, 4, 4)
    spread_diverse, spread_copies = layer(diverse)[:, -1], layer(copies)[:, -1]
    assert layer(diverse).shape == (8, 4, 4, 4)
    assert spread_copies.max() < 1e-3 < 0.5 < spread_diverse.min()
    # Groups are consecutive samples: a group of copies beside a diverse group keeps its own spread.
    mixed = layer(torch.cat([copies[:4], diverse[:4]]))[:, -1, 0, 0]
    assert mixed[:4].max() < 1e-3 < 0.5 < mixed[4:].min()


def test_minibatch_std_learns_the_real_spread_only_from_real_batches():
    cfg = ModelConfig(latent_dim=8, mapping_dim=16, g_channels=16, d_channels=8, d_hidden=16, minibatch_std=4)
    D = Discriminator(cfg, DataShape(8, 1, 10))
    images, labels = torch.randn(8, 1, 8, 8), torch.arange(8)
    D(images, labels)  # a generated batch: not the real spread
    assert D.minibatch_std.real_spread == 0
    with D.observing_real():
        D(images, labels)
    learnt = D.minibatch_std.real_spread.item()
    assert learnt > 0 and [k for k in D.state_dict() if "real_spread" in k] == ["features.4.real_spread"]
    # Scoring (eval mode) judges each sample as one of a group as spread as real ones: alone or in
    # a batch, its score is the same, and the running spread is left as it was.
    D.eval()
    together = D(images, labels)
    alone = torch.cat([D(images[i:i + 1], labels[i:i + 1]) for i in range(8)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert D.minibatch_std.real_spread.item() == learnt


def test_a_group_of_one_is_refused():
    with pytest.raises(ValueError, match="group of 1"):
        ModelConfig(minibatch_std=1)
