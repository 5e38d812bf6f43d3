"""Network behaviour the NVIDIA fixture doesn't cover: resampling conv, modconv forms, mbstd,
architectures, conditioning, truncation, w_avg tracking, layer freezing."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from rootedgan.networks import Discriminator, Generator
from rootedgan.networks.layers import MinibatchStdLayer, conv2d_resample, modulated_conv2d
from stylegan_ops import setup_filter, upfirdn2d


def conv2d_resample_definition(x, w, f, up, down, padding, groups, flip_weight):
    """The literal four-step definition from STYLEGAN2-SPEC.md (slow, obviously correct)."""
    fw = f.shape[-1]
    p = [padding] * 4
    if up > 1:
        p = [
            p[0] + (fw + up - 1) // 2,
            p[1] + (fw - up) // 2,
            p[2] + (fw + up - 1) // 2,
            p[3] + (fw - up) // 2,
        ]
    if down > 1:
        p = [
            p[0] + (fw - down + 1) // 2,
            p[1] + (fw - down) // 2,
            p[2] + (fw - down + 1) // 2,
            p[3] + (fw - down) // 2,
        ]
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=p, gain=up**2, impl="ref")
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = upfirdn2d(x, f, down=down, impl="ref")
    return x


@pytest.mark.parametrize(
    "up,down,k,padding,groups,flip_weight",
    [
        (u, d, k, p, g, fw)
        for (u, d), k, p, g, fw in itertools.product(
            [(1, 1), (2, 1), (1, 2)], [1, 3], [0, 1], [1, 2], [True, False]
        )
    ],
)
def test_conv2d_resample_equals_definition(up, down, k, padding, groups, flip_weight):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    got = conv2d_resample(x, w, f, up=up, down=down, padding=padding, groups=groups, flip_weight=flip_weight)
    expected = conv2d_resample_definition(x, w, f, up, down, padding, groups, flip_weight)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_fused_equals_nonfused(up, demodulate):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 5, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    kw = dict(up=up, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=(up == 1))
    a = modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    b = modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if demodulate:  # unit-norm filters per sample: scaling styles changes nothing (up to the 1e-8 eps)
        c = modulated_conv2d(x, weight, styles * 3.0, fused_modconv=True, **kw)
        torch.testing.assert_close(a, c, rtol=1e-7, atol=1e-7)


def test_minibatch_std_groups_by_stride():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    out = MinibatchStdLayer(group_size=3)(x)
    assert out.shape == (6, 5, 3, 3)
    n = 6 // 3
    for i in range(6):
        members = [j for j in range(6) if j % n == i % n]  # sample i is in group i % n
        std = x[members].std(dim=0, unbiased=False).add(0).square().add(1e-8).sqrt().mean()
        torch.testing.assert_close(out[i, 4], torch.full((3, 3), float(std), dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 4, 3, 3))


def tiny_generator(**kw):
    args = dict(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=256, channel_max=32),
    )
    args.update(kw)
    return Generator(**args)


def tiny_discriminator(**kw):
    args = dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32)
    args.update(kw)
    return Discriminator(**args)


@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
@pytest.mark.parametrize("c_dim", [0, 5])
def test_generator_and_discriminator_architectures(architecture, c_dim):
    torch.manual_seed(0)
    G = tiny_generator(
        c_dim=c_dim, synthesis_kwargs=dict(channel_base=256, channel_max=32, architecture=architecture)
    )
    D = tiny_discriminator(c_dim=c_dim, architecture=architecture)
    z = torch.randn(4, 16)
    c = F.one_hot(torch.arange(4) % 5, 5).float() if c_dim else torch.zeros(4, 0)
    img = G(z, c, noise_mode="const")
    assert img.shape == (4, 3, 16, 16) and img.dtype == torch.float32 and torch.isfinite(img).all()
    logits = D(img, c)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()
    # state_dict round trip through the recorded constructor arguments
    G2 = Generator(**G.init_kwargs)
    G2.load_state_dict(G.state_dict())
    D2 = Discriminator(**D.init_kwargs)
    D2.load_state_dict(D.state_dict())
    torch.testing.assert_close(G2(z, c, noise_mode="const"), img)
    torch.testing.assert_close(D2(img, c), logits)
    if c_dim:  # the label changes the output
        assert not torch.allclose(G(z, c.roll(1, 0), noise_mode="const"), img)
        assert not torch.allclose(D(img, c.roll(1, 0)), logits)


def test_num_ws_and_resolution_blocks():
    G = tiny_generator(img_resolution=64)
    assert G.num_ws == 2 * 5  # 2 * log2(64) - 2
    assert G.synthesis.block_resolutions == [4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="power of two"):
        tiny_generator(img_resolution=48)
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(torch.zeros(1, 3, 16))


def test_noise_modes():
    torch.manual_seed(0)
    G = tiny_generator().eval()
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    z = torch.randn(2, 16)
    c = torch.zeros(2, 0)
    const_a, const_b = G(z, c, noise_mode="const"), G(z, c, noise_mode="const")
    torch.testing.assert_close(const_a, const_b)
    assert not torch.allclose(G(z, c, noise_mode="random"), G(z, c, noise_mode="random"))
    assert not torch.allclose(G(z, c, noise_mode="none"), const_a)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, c, noise_mode="fixed")


def test_truncation_and_cutoff():
    torch.manual_seed(0)
    G = tiny_generator().eval()
    G.mapping.w_avg.normal_()
    z = torch.randn(3, 16)
    c = torch.zeros(3, 0)
    ws = G.mapping(z, c)
    half = G.mapping(z, c, truncation_psi=0.5)
    torch.testing.assert_close(half, G.mapping.w_avg + 0.5 * (ws - G.mapping.w_avg))
    cut = G.mapping(z, c, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], half[:, :2])
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])
    torch.testing.assert_close(G.mapping(z, c, truncation_psi=0.0), G.mapping.w_avg.expand_as(ws))


def test_w_avg_tracking_only_in_training():
    torch.manual_seed(0)
    G = tiny_generator()
    z = torch.randn(8, 16)
    c = torch.zeros(8, 0)
    G.eval()
    G.mapping(z, c)
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    G.train()
    w = G.mapping(z, c)[:, 0].detach()
    torch.testing.assert_close(G.mapping.w_avg, 0.005 * w.mean(0))
    before = G.mapping.w_avg.clone()
    G.mapping(z, c, skip_w_avg_update=True)
    torch.testing.assert_close(G.mapping.w_avg, before)
    G.eval()
    G.mapping(z, c, update_emas=True)  # stylegan3's flag forces the update
    assert not torch.allclose(G.mapping.w_avg, before)


def test_freeze_layers_turns_top_layers_into_buffers():
    D = tiny_discriminator(block_kwargs=dict(freeze_layers=5))
    trainable = {n for n, _ in D.named_parameters()}
    # b16: fromrgb, conv0, conv1, skip (layers 0-3); b8: conv0 (4) frozen, conv1 (5) trainable
    for frozen in ["b16.fromrgb.weight", "b16.conv0.weight", "b16.skip.weight", "b8.conv0.weight"]:
        assert frozen not in trainable and frozen in D.state_dict()
    assert "b8.conv1.weight" in trainable and "b4.fc.weight" in trainable
    assert set(D.state_dict()) == set(tiny_discriminator().state_dict())


def test_fp16_blocks_run_in_fp32_on_cpu():
    torch.manual_seed(0)
    G = tiny_generator(
        synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=2, conv_clamp=256)
    )
    G32 = tiny_generator(
        synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=256)
    )
    G32.load_state_dict(G.state_dict())
    assert G.synthesis.b16.use_fp16 and G.synthesis.b8.use_fp16 and not G.synthesis.b4.use_fp16
    z = torch.randn(2, 16)
    c = torch.zeros(2, 0)
    torch.testing.assert_close(G(z, c, noise_mode="const"), G32(z, c, noise_mode="const"))


def test_double_backward_through_discriminator_for_r1():
    torch.manual_seed(0)
    D = tiny_discriminator()
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(D(img, None).sum(), img, create_graph=True)
    penalty = grad.square().sum()
    penalty.backward()
    # every weight receives a second-order gradient (biases of the last layer cannot affect grad_x)
    weights = {n: p for n, p in D.named_parameters() if n.endswith("weight")}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights.values())
    assert D.b4.out.bias.grad is None
