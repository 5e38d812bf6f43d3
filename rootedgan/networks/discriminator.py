"""StyleGAN2 discriminator (resnet/skip/orig), NVIDIA stylegan2-ada compatible: ``D(img, c) -> logits``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rootedgan.networks.generator import MappingNetwork, captured_kwargs, channels_at, fp16_start_resolution
from rootedgan.networks.layers import (
    DEFAULT_RESAMPLE_KERNEL,
    Conv2dLayer,
    FullyConnectedLayer,
    MinibatchStdLayer,
    ResolutionBlock,
)
from stylegan_ops import downsample2d


class DiscriminatorBlock(ResolutionBlock):
    """One resolution of D: (fromrgb), conv0 3x3, conv1 3x3 down x2, and a 1x1 skip (resnet). Layers count
    from ``first_layer_idx`` (fromrgb, conv0, conv1, skip); those below ``freeze_layers`` are not trained."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        first_layer_idx: int,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: Sequence[int] = DEFAULT_RESAMPLE_KERNEL,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        freeze_layers: int = 0,
    ) -> None:
        super().__init__(in_channels, resolution, architecture, resample_filter, use_fp16, fp16_channels_last)
        self.img_channels, self.first_layer_idx = img_channels, first_layer_idx
        self.num_layers = 0

        def add(name: str, cin: int, cout: int, kernel_size: int, **kwargs: Any) -> None:
            trainable = first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            conv = Conv2dLayer(
                cin, cout, kernel_size, trainable=trainable, channels_last=self.channels_last, **kwargs
            )
            setattr(self, name, conv)

        act = dict(activation=activation, conv_clamp=conv_clamp)
        if in_channels == 0 or architecture == "skip":
            add("fromrgb", img_channels, tmp_channels, 1, **act)
        add("conv0", tmp_channels, tmp_channels, 3, **act)
        add("conv1", tmp_channels, out_channels, 3, down=2, resample_filter=resample_filter, **act)
        if architecture == "resnet":
            add("skip", tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(
        self, x: torch.Tensor | None, img: torch.Tensor | None, force_fp32: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [N, in, R, R]`` (None for the first block), ``img [N, C, R, R]`` -> ``[N, out, R/2, R/2]``."""
        dtype, memory_format = self.formats((img if img is not None else x).device, force_fp32)
        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5)), img
        return self.conv1(self.conv0(x)), img


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: minibatch-std, 3x3 conv, fc, out (projected onto the label embedding if conditional)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.cmap_dim = in_channels, cmap_dim
        self.resolution, self.architecture = resolution, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            kernel_size=3,
            activation=activation,
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(
        self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None, force_fp32: bool = False
    ) -> torch.Tensor:
        """``x [N, C, 4, 4]`` -> logits ``[N, 1]``."""
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(torch.float32))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """StyleGAN2 discriminator: ``D(img [N, C, R, R] in [-1, 1], c [N, c_dim]) -> logits [N, 1]``."""

    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        cmap_dim: int | None = None,
        block_kwargs: dict | None = None,
        mapping_kwargs: dict | None = None,
        epilogue_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        block_kwargs = dict(block_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        self.init_kwargs = captured_kwargs(locals())
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(int(np.log2(img_resolution)), 2, -1)]
        if cmap_dim is None:
            cmap_dim = channels_at(4, channel_base, channel_max)
        self.cmap_dim = cmap_dim = 0 if c_dim == 0 else cmap_dim
        fp16_resolution = fp16_start_resolution(img_resolution, num_fp16_res)
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels_at(res, channel_base, channel_max) if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels,
                channels_at(res, channel_base, channel_max),
                channels_at(res // 2, channel_base, channel_max),
                resolution=res,
                first_layer_idx=layer_idx,
                use_fp16=(res >= fp16_resolution),
                **block_kwargs,
                **common,
            )
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **mapping_kwargs
            )
        self.b4 = DiscriminatorEpilogue(
            channels_at(4, channel_base, channel_max),
            cmap_dim=cmap_dim,
            resolution=4,
            **epilogue_kwargs,
            **common,
        )

    def forward(
        self, img: torch.Tensor, c: torch.Tensor | None, update_emas: bool = False, **block_kwargs: Any
    ) -> torch.Tensor:
        """``img [N, C, R, R]``, ``c [N, c_dim]`` -> logits ``[N, 1]``. ``update_emas`` is accepted for
        stylegan3-style callers and has no effect (D keeps no running averages)."""
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"D expects images [N, {', '.join(map(str, expected))}], got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
