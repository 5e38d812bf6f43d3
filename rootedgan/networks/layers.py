"""Building blocks of the generator and discriminator. Parameters are stored at unit scale and multiplied by
their He-init gain at run time (``STYLEGAN2-SPEC.md``, "Equalized learning rate"). Tensors are NCHW."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stylegan_ops import ACTIVATIONS, bias_act, setup_filter, upfirdn2d
from stylegan_ops.upfirdn2d import centered_padding, parse_padding

DEFAULT_RESAMPLE_KERNEL = (1, 3, 3, 1)


class Module(nn.Module):
    """An ``nn.Module`` whose ``extra_repr`` lists the attributes named in ``repr_fields``."""

    repr_fields: tuple[str, ...] = ()

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.repr_fields)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x^2 over dim) + eps)``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """Convolution with FIR up/downsampling (``STYLEGAN2-SPEC.md``): ``x [N, I, H, W]``, ``w [O, I / groups,
    kh, kw]`` -> ``[N, O, H', W']``.

    Definition: pad (``padding`` plus the resampling pad), zero-insert and filter with ``f`` (from
    ``setup_filter``) if ``up > 1`` (gain ``up^2``), convolve with ``w`` unpadded (``flip_weight=True``:
    correlation, like ``torch.conv2d``), then filter with ``f`` and keep every ``down``-th sample if
    ``down > 1``. The branches are faster orderings of the same linear operator.
    """
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample: up and down at once is not supported")
    out_ch, in_per_group, kh, kw = w.shape
    factor = max(up, down)
    pad = centered_padding(f, padding, (factor, factor), up > 1) if factor > 1 else parse_padding(padding)
    px0, px1, py0, py1 = pad

    if kh == 1 and kw == 1 and (up > 1 or down > 1):  # a 1x1 conv commutes with spatial operations
        if down > 1:
            return F.conv2d(upfirdn2d(x, f, down=down, padding=pad), w, groups=groups)
        return upfirdn2d(F.conv2d(x, w, groups=groups), f, up=up, padding=pad, gain=up * up)

    if down > 1:  # pad + filter, then a strided conv (filtering commutes with the conv)
        w_corr = w if flip_weight else w.flip([2, 3])
        return F.conv2d(upfirdn2d(x, f, padding=pad), w_corr, stride=down, groups=groups)

    if up > 1:
        # conv_transpose2d = zero insertion followed by a full *true* convolution with its weight.
        # Its output is the full-support result; the FIR pass then crops it to the definition's window.
        # The grouped conv2d weight [O, I/g, kh, kw] becomes the conv_transpose2d weight [I, O/g, kh, kw].
        w_true = w.flip([2, 3]) if flip_weight else w
        w_true = w_true.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        w_true = w_true.reshape(groups * in_per_group, out_ch // groups, kh, kw)
        x = F.conv_transpose2d(x, w_true, stride=up, groups=groups)
        crop = [px0 - kw + 1, up + px1 - kw, py0 - kh + 1, up + py1 - kh]
        return upfirdn2d(x, f, padding=crop, gain=up * up)

    w_corr = w if flip_weight else w.flip([2, 3])
    if px0 == px1 == py0 == py1 and px0 >= 0:
        return F.conv2d(x, w_corr, padding=px0, groups=groups)
    return F.conv2d(upfirdn2d(x, None, padding=pad), w_corr, groups=groups)


def conv_weight(out_channels: int, in_channels: int, kernel_size: int, channels_last: bool) -> torch.Tensor:
    """A convolution weight ``[out, in, k, k]`` ~ N(0, 1) (channels-last memory if asked)."""
    weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
    return weight.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class FullyConnectedLayer(Module):
    """Equalized-lr linear layer ``act(x @ (W * m / sqrt(in)).T + b * m)``; ``weight [out, in]`` is stored as
    ``N(0, 1) / lr_multiplier``, ``bias [out]`` as ``bias_init``."""

    repr_fields = ("in_features", "out_features", "activation")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in] -> [N, out]``."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(Module):
    """Equalized-lr convolution (``weight / sqrt(in * k * k)``, weight ~ N(0, 1)) with optional FIR
    up/downsampling, bias, activation and clamp. When not ``trainable`` (frozen D layers) weight and bias
    are buffers under the same names."""

    repr_fields = ("in_channels", "out_channels", "activation", "up", "down")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[int] = DEFAULT_RESAMPLE_KERNEL,
        conv_clamp: float | None = None,
        channels_last: bool = False,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.conv_clamp = up, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACTIVATIONS[activation].def_gain
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        weight = conv_weight(out_channels, in_channels, kernel_size, channels_last)
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_value) if bias_value is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias_value)

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        """``[N, in, H, W] -> [N, out, H*up/down, W*up/down]``; ``gain`` scales output and clamp."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        flip = self.up == 1
        x = conv2d_resample(x, w, self.resample_filter, self.up, self.down, self.padding, flip_weight=flip)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ResolutionBlock(Module):
    """What a synthesis and a discriminator block share: one resolution, its architecture (``orig``, ``skip``,
    ``resnet``), fp16 use and the resampling filter."""

    repr_fields = ("resolution", "architecture", "use_fp16")

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        architecture: str,
        resample_filter: Sequence[int],
        use_fp16: bool,
        fp16_channels_last: bool,
    ) -> None:
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be orig, skip or resnet, got {architecture!r}")
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))

    def formats(self, device: torch.device, force_fp32: bool) -> tuple[torch.dtype, torch.memory_format]:
        """The dtype and memory format this block runs in (fp16 only on CUDA and unless ``force_fp32``)."""
        fp16 = self.use_fp16 and not force_fp32 and device.type == "cuda"
        memory_format = torch.channels_last if self.channels_last and fp16 else torch.contiguous_format
        return (torch.float16 if fp16 else torch.float32), memory_format


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2's modulated (and optionally demodulated) convolution: ``x [N, I, H, W]``, ``weight [O, I,
    k, k]``, ``styles [N, I]``, ``noise`` broadcastable to the output or None -> ``[N, O, H', W']``.

    Per sample n: ``w' = weight * styles[n, in]``; demodulation divides each output filter by
    ``sqrt(sum(w'^2) + 1e-8)``. ``fused_modconv`` runs one grouped conv with per-sample weights (NVIDIA's
    arithmetic, bit for bit); otherwise activations are scaled before and after a shared conv and the
    demodulation sums are factored (equal up to rounding, without NVIDIA's ``[N, O, I, k, k]`` weights).
    """
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # Keep fp16 in range; both factors cancel out in the demodulation below.
        weight = weight * (
            1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        )
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    resample = dict(f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)

    if fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_ch, 1, 1)  # [N, O, I, k, k]
        if demodulate:
            w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(batch, out_ch, 1, 1, 1)
        x = x.reshape(1, batch * in_ch, *x.shape[2:])
        x = conv2d_resample(x, w.reshape(batch * out_ch, in_ch, kh, kw).to(x.dtype), groups=batch, **resample)
        x = x.reshape(batch, out_ch, *x.shape[2:])
    else:
        if demodulate:
            # The same sums factored, sum_i s[n,i]^2 * sum_k weight[o,i,k]^2, without the [N, O, I, k, k]
            # weights (equal up to rounding; fp32 even under autocast, like the per-sample weights). Built
            # before the conv, as NVIDIA's: the graph's order is the order in which autograd sums weight's
            # and styles' gradients, and another order rounds differently (tests/test_nvidia_iterations.py).
            dtype = torch.promote_types(weight.dtype, styles.dtype)
            with torch.autocast(device_type=x.device.type, enabled=False):
                w_sq = weight.to(dtype).square().sum(dim=[2, 3])  # [O, I]
                dcoefs = (styles.to(dtype).square() @ w_sq.t() + 1e-8).rsqrt()  # [N, O]
        x = x * styles.to(x.dtype).reshape(batch, in_ch, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), **resample)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_ch, 1, 1)
    return x + noise.to(x.dtype) if noise is not None else x


class MinibatchStdLayer(Module):
    """Appends the per-group standard deviation of the features as extra channels (groups by stride: with
    ``n = N / G``, sample i is in group ``i % n``)."""

    repr_fields = ("group_size", "num_channels")

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N, C + num_channels, H, W]``."""
        n, c, h, w = x.shape
        size = min(self.group_size, n) if self.group_size is not None else n
        if n % size != 0:
            raise ValueError(f"minibatch-std: batch size {n} is not divisible by the group size {size}")
        feats = self.num_channels
        grouped = x.reshape(size, -1, feats, c // feats, h, w)  # [G, n, F, C/F, H, W]
        var = (grouped - grouped.mean(dim=0)).square().mean(dim=0)  # population variance over members
        std = (var + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n, F]
        std = std.reshape(-1, feats, 1, 1).repeat(size, 1, h, w)  # back to [N, F, H, W]
        return torch.cat([x, std], dim=1)
