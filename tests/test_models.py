"""The seed's networks: shapes follow the data, true parameter counts, per-sample independence."""

import pytest
import torch
from torch.nn.utils import parametrize

from gan_core.config import ModelConfig
from gan_core.images.models import (DataShape, Discriminator, Generator, MinibatchStd, count_parameters,
                                    standing_statistics)


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


def test_standing_statistics_describe_the_generators_own_batches():
    cfg = ModelConfig(latent_dim=8, mapping_dim=16, g_channels=16, g_norm="batch")
    G = Generator(cfg, DataShape(8, 1, 10)).eval()
    first = G.first[0]
    assert isinstance(first, torch.nn.BatchNorm2d) and first.running_mean.abs().max() == 0  # untouched
    standing_statistics(G, seed=3, batches=4, batch_size=20)
    assert not G.training and first.momentum == 0.1
    # The running mean is the average over the 4 batches of the projection's per-channel means.
    noise, labels = torch.Generator().manual_seed(3), torch.arange(20) % 10
    with torch.no_grad():
        means = [G.project(G.mapping(torch.randn(20, 8, generator=noise), labels)).view(20, 16, 16).mean(dim=(0, 2))
                 for _ in range(4)]
    torch.testing.assert_close(first.running_mean, torch.stack(means).mean(dim=0), rtol=1e-4, atol=1e-5)
    z = torch.randn(5, 8)  # in eval mode a sample no longer depends on its batch-mates
    torch.testing.assert_close(G(z, labels[:5]), torch.cat([G(z[i:i + 1], labels[i:i + 1]) for i in range(5)]),
                               rtol=1e-5, atol=1e-6)


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


def test_minibatch_std_sees_copies_within_a_class_that_differs_from_the_others():
    layer = MinibatchStd(num_classes=3).train()
    one_copy_per_class = torch.randn(3, 2, 4, 4).repeat(4, 1, 1, 1)  # rows 0, 3, 6, 9 alike: class 0, ...
    labels = torch.arange(12) % 3
    out = layer(one_copy_per_class, labels)
    assert out.shape == (12, 3, 4, 4)
    # Across the batch the rows differ (a batch-wide spread would be about 1); within each class they do not.
    assert out[:, -1].max() < 1e-3
    diverse = layer(torch.randn(12, 2, 4, 4), labels)[:, -1]
    assert diverse.min() > 0.5
    # Two classes of copies beside one diverse class: only the diverse class's rows see a spread.
    mixed = one_copy_per_class.clone()
    mixed[labels == 2] = torch.randn(4, 2, 4, 4)
    spread = layer(mixed, labels)[:, -1, 0, 0]
    assert spread[labels != 2].max() < 1e-3 < 0.5 < spread[labels == 2].min()


def test_minibatch_std_learns_each_class_real_spread_only_from_real_batches():
    cfg = ModelConfig(latent_dim=8, mapping_dim=16, g_channels=16, d_channels=8, d_hidden=16, minibatch_std=True)
    D = Discriminator(cfg, DataShape(8, 1, 10))
    images, labels = torch.randn(8, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    D(images, labels)  # a generated batch: not the real spread
    assert (D.minibatch_std.real_spread == 0).all()
    with D.observing_real():
        D(images, labels)
    learnt = D.minibatch_std.real_spread.clone()
    # Classes 0-2 had two samples each; 3 and 4 one (no spread to learn from); 5-9 none.
    assert (learnt[:3] > 0).all() and (learnt[3:] == 0).all()
    assert "minibatch_std.real_spread" in D.state_dict()
    # Scoring (eval mode) judges each sample as one of a class as spread as real ones: alone or in
    # a batch, its score is the same, and the running spread is left as it was.
    D.eval()
    together = D(images, labels)
    alone = torch.cat([D(images[i:i + 1], labels[i:i + 1]) for i in range(8)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert D.minibatch_std.real_spread.equal(learnt)


def test_light_blocks_a_1x1_grow_path_equals_upsampling_then_the_same_convolution():
    cfg = ModelConfig(latent_dim=8, mapping_dim=16, g_channels=16, grow_kernel=1, refine=False)
    block = Generator(cfg, DataShape(8, 1, 10)).decoder[0]
    conv = block.grow[0]
    x = torch.randn(3, 16, 4, 4)
    upsampled_first = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2), conv.weight,
                                                 conv.bias)
    torch.testing.assert_close(block.grow(x), upsampled_first, rtol=1e-5, atol=1e-6)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in block.refine)  # no refine convolution


def test_without_a_stem_the_first_strided_layer_reads_the_image():
    shape = DataShape(32, 1, 10)
    D = Discriminator(ModelConfig(d_channels=64, d_stem=False), shape)
    convs = [m for m in D.features if isinstance(m, torch.nn.Conv2d)]
    # DCGAN's discriminator widths: 64 at 16x16, 128 at 8x8, 256 at 4x4
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [(1, 64, 2), (64, 128, 2), (128, 256, 2)]
    assert D(torch.randn(4, 1, 32, 32), torch.arange(4)).shape == (4,)


def test_without_spectral_norm_no_layer_of_d_is_reparametrised_and_the_projection_starts_small():
    shape = DataShape(32, 1, 10)
    plain = Discriminator(ModelConfig(d_spectral_norm=False, d_hidden=64), shape)
    normed = Discriminator(ModelConfig(d_hidden=64), shape)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert sum(parametrize.is_parametrized(m) for m in normed.modules()) == 7  # 4 convs, hidden, output, embed
    # rows of N(0, 1/d_hidden), not nn.Embedding's N(0, 1): the class term is as large as a linear layer's output
    assert 0.8 < plain.embed.weight.std().item() * 64**0.5 < 1.2


def test_a_batchnorm_discriminator_normalises_every_strided_layer_but_the_one_reading_the_image():
    shape = DataShape(32, 1, 10)
    D = Discriminator(ModelConfig(d_channels=8, d_hidden=16, d_stem=False, d_norm="batch", d_spectral_norm=False,
                                  minibatch_std=False), shape)
    kinds = [type(m).__name__ for m in D.features]
    assert kinds == ["Conv2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU"]
    with_stem = Discriminator(ModelConfig(d_channels=8, d_hidden=16, d_norm="batch", minibatch_std=False), shape)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in with_stem.features) == 3  # the stem reads the image
    images, labels = torch.randn(6, 1, 32, 32), torch.arange(6)
    D(images, labels)  # training mode: the batch's statistics, and the running ones move
    assert D.features[3].running_mean.abs().max() > 0
    D.eval()  # a score then depends on its image alone, as rejection sampling and d_score need
    torch.testing.assert_close(D(images, labels), torch.cat([D(images[i:i + 1], labels[i:i + 1]) for i in range(6)]),
                               rtol=1e-5, atol=1e-6)
