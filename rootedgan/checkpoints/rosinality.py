"""rosinality/stylegan2-pytorch checkpoints (``.pt``, ``torch.save``) <-> our NVIDIA-layout networks.

A rosinality checkpoint is a dict with ``g``, ``d``, ``g_ema`` state dicts and optionally ``latent_avg``,
``args`` (an ``argparse.Namespace``), ``g_optim``, ``d_optim``, ``ada_aug_p``. It is loaded with
``torch.load(weights_only=True)`` and ``argparse.Namespace`` as the only extra allowed global.

The networks map one-to-one onto NVIDIA's structure by renaming keys (the verified mapping is in
``fixtures/rosinality/README.md``); the architecture (resolution, latent size, mapping depth, channel
widths) is inferred from tensor shapes. Converted networks use ``conv_clamp=None`` (rosinality does not
clamp), ``num_fp16_res=0`` and a minibatch-std layer with group 4 and 1 feature, as rosinality's do.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rootedgan.checkpoints.records import (
    DISCRIMINATOR,
    GENERATOR,
    NetworkRecord,
    atomic_write,
    check_metadata,
    default_resample_filter,
    jsonable,
    write_chunks,
)
from rootedgan.errors import CheckpointError, UnsafeCheckpointError

FORMAT = "rosinality-pt"

# rosinality `channel_multiplier=2` is NVIDIA's default width schedule.
NVIDIA_CHANNEL_BASE = 32768
_ROSINALITY_NETS = {"g": "G", "d": "D", "g_ema": "G_ema"}
_MBSTD = {"mbstd_group_size": 4, "mbstd_num_channels": 1}
_W_AVG_SAMPLES = 10000  # as in records.estimate_w_avg


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's messages go on for paragraphs)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line.split(". ")[0].rstrip(".")


def torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` with ``argparse.Namespace`` allowed; errors made clear."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "weights_only" in msg or "Unsupported" in msg or "Weights only" in msg:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f"the global `{found.group(1)}`" if found else "code"
            raise UnsafeCheckpointError(
                f"refused to load {path}: this torch.save archive references {what}, which is not on the "
                "allow-list of tensor and container types; the file was not loaded"
            ) from err
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(err)}).") from err
    except Exception as err:  # RuntimeError, EOFError, zipfile.BadZipFile, ...: never a raw stack trace
        if isinstance(err, CheckpointError):
            raise
        if isinstance(err, FileNotFoundError):
            raise CheckpointError(f"{path} does not exist") from err
        raise CheckpointError(
            f"{path} is truncated or corrupt: it starts like a torch.save archive but cannot be read "
            f"({_first_line(err)}). Download or copy it again."
        ) from err


def is_rosinality(ckpt: Any) -> bool:
    """Whether a ``torch.load``-ed object looks like a rosinality checkpoint."""
    if not isinstance(ckpt, Mapping):
        return False
    g = ckpt.get("g_ema", ckpt.get("g"))
    return isinstance(g, Mapping) and "input.input" in g and "style.1.weight" in g


# ----------------------------------------------------------------------------------------------------------
# Architecture inference.


def infer_channel_params(widths: Mapping[int, int], what: str = "network") -> tuple[int, int]:
    """``(channel_base, channel_max)`` with ``min(channel_base // r, channel_max) == widths[r]`` for all r.

    Prefers NVIDIA's default ``channel_base=32768`` when it fits, else the smallest value that does.
    Raises :class:`CheckpointError` when no pair reproduces the widths.
    """
    channel_max = max(widths.values())
    lower = max(c * r for r, c in widths.items())
    upper = min((c * r + r - 1 for r, c in widths.items() if c < channel_max), default=None)
    candidates = [NVIDIA_CHANNEL_BASE, lower] if lower <= NVIDIA_CHANNEL_BASE else [lower]
    for base in candidates:
        if (upper is None or base <= upper) and all(
            min(base // r, channel_max) == c for r, c in widths.items()
        ):
            return base, channel_max
    table = ", ".join(f"{r}px: {c}" for r, c in sorted(widths.items()))
    raise CheckpointError(
        f"the {what}'s channel widths ({table}) do not follow min(channel_base // resolution, channel_max) "
        "for any channel_base; this architecture cannot be represented by our networks"
    )


def _shape(sd: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"the rosinality {what} state dict has no `{key}`")
    return tuple(sd[key].shape)


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _log2_res(num: int, what: str) -> int:
    if num < 2 or num & (num - 1):
        raise CheckpointError(f"the rosinality {what} implies a resolution of {num}, not a power of two >= 4")
    return int(math.log2(num))


def generator_kwargs(sd: Mapping[str, torch.Tensor], args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our ``Generator`` kwargs for a rosinality generator state dict (from shapes; ``args`` cross-checks)."""
    n_mlp = _count(sd, r"style\.(\d+)\.weight$")
    w_dim, z_dim = _shape(sd, "style.1.weight", "generator")
    const = _shape(sd, "input.input", "generator")
    n_convs = _count(sd, r"convs\.(\d+)\.conv\.weight$")
    if n_convs % 2:
        raise CheckpointError(f"the rosinality generator has an odd number of convs ({n_convs})")
    res = 4 * 2 ** (n_convs // 2)
    img_channels = _shape(sd, "to_rgb1.conv.weight", "generator")[1]
    widths = {4: const[1]}
    for j in range(n_convs // 2):
        widths[8 * 2**j] = _shape(sd, f"convs.{2 * j}.conv.weight", "generator")[1]
    args = args or {}
    if args.get("size") not in (None, res):
        raise CheckpointError(f"the rosinality args say size {args['size']} but the generator is {res}px")
    base, cmax = infer_channel_params(widths, "generator")
    mapping_kwargs: dict[str, Any] = {"num_layers": n_mlp}
    lr_mlp = args.get("lr_mlp")
    if isinstance(lr_mlp, int | float) and lr_mlp != 0.01:
        mapping_kwargs["lr_multiplier"] = float(lr_mlp)
    return {
        "z_dim": z_dim,
        "c_dim": 0,
        "w_dim": w_dim,
        "img_resolution": res,
        "img_channels": img_channels,
        "mapping_kwargs": mapping_kwargs,
        "synthesis_kwargs": {
            "channel_base": base,
            "channel_max": cmax,
            "num_fp16_res": 0,
            "conv_clamp": None,
        },
    }


def discriminator_kwargs(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Our ``Discriminator`` kwargs for a rosinality discriminator state dict (from shapes)."""
    n_blocks = _count(sd, r"convs\.(\d+)\.conv1\.0\.weight$")
    res = 4 * 2**n_blocks
    _log2_res(res, "discriminator")
    c_res, img_channels = _shape(sd, "convs.0.0.weight", "discriminator")[:2]
    widths = {res: c_res}
    for i in range(1, n_blocks + 1):
        r = res // 2 ** (i - 1)
        widths[r // 2] = _shape(sd, f"convs.{i}.conv2.1.weight", "discriminator")[0]
    c4 = widths[4]
    final_in = _shape(sd, "final_conv.0.weight", "discriminator")[1]
    if final_in - c4 != _MBSTD["mbstd_num_channels"]:
        raise CheckpointError(
            f"the rosinality discriminator's final conv takes {final_in} channels; expected {c4} + 1 "
            "(minibatch-std with one feature)"
        )
    base, cmax = infer_channel_params(widths, "discriminator")
    return {
        "c_dim": 0,
        "img_resolution": res,
        "img_channels": img_channels,
        "architecture": "resnet",
        "channel_base": base,
        "channel_max": cmax,
        "num_fp16_res": 0,
        "conv_clamp": None,
        "epilogue_kwargs": dict(_MBSTD),
    }


# ----------------------------------------------------------------------------------------------------------
# Key conversion, rosinality -> NVIDIA layout.


def _check_kernel(t: torch.Tensor, gain: float, key: str) -> None:
    expected = default_resample_filter() * gain
    if tuple(t.shape) != (4, 4) or not torch.allclose(t.float(), expected, rtol=1e-5, atol=1e-6):
        raise CheckpointError(
            f"`{key}` is not the standard [1, 3, 3, 1] blur kernel; custom kernels are not supported"
        )


class _Consumer:
    """Reads tensors from a state dict by key and reports the keys nobody read."""

    def __init__(self, sd: Mapping[str, torch.Tensor], what: str) -> None:
        self.sd = sd
        self.what = what
        self.used: set[str] = set()

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise CheckpointError(f"the rosinality {self.what} state dict has no `{key}`")
        self.used.add(key)
        t = self.sd[key]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"`{key}` in the rosinality {self.what} is not a tensor")
        return t.detach().to("cpu", torch.float32).clone()

    def has(self, key: str) -> bool:
        return key in self.sd

    def finish(self) -> None:
        left = sorted(set(self.sd) - self.used)
        if left:
            more = f" ... and {len(left) - 8} more" if len(left) > 8 else ""
            raise CheckpointError(
                f"the rosinality {self.what} has tensors this converter does not know: "
                f"{', '.join(left[:8])}{more}"
            )


def _generator_layers(res: int) -> list[tuple[str, int]]:
    """(NVIDIA layer prefix, resolution) of every synthesis conv in order (= rosinality noise order)."""
    layers = [("synthesis.b4.conv1", 4)]
    r = 8
    while r <= res:
        layers += [(f"synthesis.b{r}.conv0", r), (f"synthesis.b{r}.conv1", r)]
        r *= 2
    return layers


def generator_to_nvidia(
    sd: Mapping[str, torch.Tensor], init_kwargs: Mapping[str, Any], latent_avg: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a rosinality generator state dict to NVIDIA keys. Returns (state dict, notes)."""
    take = _Consumer(sd, "generator")
    notes: list[str] = []
    res = init_kwargs["img_resolution"]
    out: dict[str, torch.Tensor] = {}
    f = default_resample_filter()
    for i in range(init_kwargs["mapping_kwargs"]["num_layers"]):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")
    if latent_avg is not None:
        out["mapping.w_avg"] = latent_avg.detach().to("cpu", torch.float32).reshape(-1).clone()
    out["synthesis.b4.const"] = take("input.input")[0]

    def conv(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}.conv.weight")[0]
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape(())
        out[f"{dst}.bias"] = take(f"{src}.activate.bias")
        out[f"{dst}.resample_filter"] = f.clone()
        if take.has(f"{src}.conv.blur.kernel"):
            _check_kernel(take(f"{src}.conv.blur.kernel"), 4.0, f"{src}.conv.blur.kernel")

    def torgb(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}.conv.weight")[0]
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(-1)
        if take.has(f"{src}.upsample.kernel"):
            _check_kernel(take(f"{src}.upsample.kernel"), 4.0, f"{src}.upsample.kernel")

    out["synthesis.b4.resample_filter"] = f.clone()
    conv("conv1", "synthesis.b4.conv1")
    torgb("to_rgb1", "synthesis.b4.torgb")
    r, j = 8, 0
    while r <= res:
        out[f"synthesis.b{r}.resample_filter"] = f.clone()
        conv(f"convs.{2 * j}", f"synthesis.b{r}.conv0")
        conv(f"convs.{2 * j + 1}", f"synthesis.b{r}.conv1")
        torgb(f"to_rgbs.{j}", f"synthesis.b{r}.torgb")
        r, j = r * 2, j + 1
    gen = torch.Generator().manual_seed(0)
    missing_noise = False
    for n, (prefix, r) in enumerate(_generator_layers(res)):
        key = f"noises.noise_{n}"
        if take.has(key):
            out[f"{prefix}.noise_const"] = take(key).reshape(r, r)
        else:
            out[f"{prefix}.noise_const"] = torch.randn([r, r], generator=gen)
            missing_noise = True
    if missing_noise:
        notes.append(
            "the checkpoint stores no fixed noise buffers; drew new ones (seed 0) for noise_mode='const'"
        )
    take.finish()
    return out, notes


def discriminator_to_nvidia(sd: Mapping[str, torch.Tensor], init_kwargs: Mapping[str, Any]) -> dict:
    """Rename a rosinality discriminator state dict to NVIDIA keys."""
    take = _Consumer(sd, "discriminator")
    res = init_kwargs["img_resolution"]
    f = default_resample_filter()
    out: dict[str, torch.Tensor] = {}
    r, i = res, 1
    while r >= 8:
        out[f"b{r}.resample_filter"] = f.clone()
        if r == res:
            out[f"b{r}.fromrgb.weight"] = take("convs.0.0.weight")
            out[f"b{r}.fromrgb.bias"] = take("convs.0.1.bias")
            out[f"b{r}.fromrgb.resample_filter"] = f.clone()
        out[f"b{r}.conv0.weight"] = take(f"convs.{i}.conv1.0.weight")
        out[f"b{r}.conv0.bias"] = take(f"convs.{i}.conv1.1.bias")
        out[f"b{r}.conv0.resample_filter"] = f.clone()
        _check_kernel(take(f"convs.{i}.conv2.0.kernel"), 1.0, f"convs.{i}.conv2.0.kernel")
        out[f"b{r}.conv1.weight"] = take(f"convs.{i}.conv2.1.weight")
        out[f"b{r}.conv1.bias"] = take(f"convs.{i}.conv2.2.bias")
        out[f"b{r}.conv1.resample_filter"] = f.clone()
        _check_kernel(take(f"convs.{i}.skip.0.kernel"), 1.0, f"convs.{i}.skip.0.kernel")
        out[f"b{r}.skip.weight"] = take(f"convs.{i}.skip.1.weight")
        out[f"b{r}.skip.resample_filter"] = f.clone()
        r, i = r // 2, i + 1
    out["b4.conv.weight"] = take("final_conv.0.weight")
    out["b4.conv.bias"] = take("final_conv.1.bias")
    out["b4.conv.resample_filter"] = f.clone()
    out["b4.fc.weight"] = take("final_linear.0.weight")
    out["b4.fc.bias"] = take("final_linear.0.bias")
    out["b4.out.weight"] = take("final_linear.1.weight")
    out["b4.out.bias"] = take("final_linear.1.bias")
    take.finish()
    return out


def _args_dict(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def read_rosinality(
    ckpt: Mapping[str, Any], source: str = ""
) -> tuple[dict[str, NetworkRecord | None], dict[str, Any]]:
    """Convert a loaded rosinality checkpoint into records for ``G``, ``D``, ``G_ema`` plus metadata.

    When ``latent_avg`` is absent, ``mapping.w_avg`` is missing from the generator records; the loader
    estimates it after building the networks (see :func:`estimate_w_avg`).
    """
    if not is_rosinality(ckpt):
        raise CheckpointError(f"{source or 'the file'} is not a rosinality StyleGAN2 checkpoint")
    args = _args_dict(ckpt.get("args"))
    check_metadata(args, f"{source or 'the file'}: args")
    check_metadata(ckpt.get("ada_aug_p"), f"{source or 'the file'}: ada_aug_p")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"`latent_avg` in {source} is not a tensor")
    records: dict[str, NetworkRecord | None] = {"G": None, "D": None, "G_ema": None}
    notes: list[str] = []
    for ros_name, name in _ROSINALITY_NETS.items():
        sd = ckpt.get(ros_name)
        if sd is None:
            continue
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"`{ros_name}` in {source} is not a state dict")
        if ros_name == "d":
            kwargs = discriminator_kwargs(sd)
            records[name] = NetworkRecord(DISCRIMINATOR, kwargs, discriminator_to_nvidia(sd, kwargs))
        else:
            kwargs = generator_kwargs(sd, args)
            state, more = generator_to_nvidia(sd, kwargs, latent_avg)
            notes += [f"{ros_name}: {n}" for n in more]
            records[name] = NetworkRecord(GENERATOR, kwargs, state)
    if records["G"] is None and records["G_ema"] is None:
        raise CheckpointError(f"{source} holds no generator (`g` or `g_ema`)")
    if latent_avg is None:
        notes.append(
            f"no latent_avg in the checkpoint: w_avg (the truncation centre) was estimated from "
            f"{_W_AVG_SAMPLES} mapped latents"
        )
    meta: dict[str, Any] = {"notes": notes}
    if args:
        meta["args"] = jsonable(args)
    if "ada_aug_p" in ckpt:
        meta["ada_aug_p"] = jsonable(ckpt["ada_aug_p"])
    return records, meta


# ----------------------------------------------------------------------------------------------------------
# The inverse: our (NVIDIA-layout) networks -> a rosinality checkpoint.


def _rosinality_channel_multiplier(synthesis_kwargs: Mapping[str, Any]) -> int | None:
    """rosinality's ``channel_multiplier`` for our width schedule, or None if stock rosinality has none."""
    base = synthesis_kwargs.get("channel_base", 32768)
    cmax = synthesis_kwargs.get("channel_max", 512)
    if cmax == 512 and base % 16384 == 0 and base >= 16384:
        return base // 16384
    return None


def _check_generator_for_rosinality(kw: Mapping[str, Any], name: str, notes: list[str]) -> None:
    syn = kw.get("synthesis_kwargs") or {}
    mapping = kw.get("mapping_kwargs") or {}
    problems = []
    if kw.get("c_dim", 0):
        problems.append("it is conditional (c_dim > 0); rosinality generators take no labels")
    if kw.get("z_dim") != kw.get("w_dim"):
        problems.append("z_dim != w_dim; rosinality uses one latent size")
    if kw.get("img_channels", 3) != 3:
        problems.append("it does not output 3 channels")
    if syn.get("architecture", "skip") != "skip":
        problems.append(f"synthesis architecture {syn.get('architecture')!r} (rosinality uses 'skip')")
    if mapping.get("layer_features") not in (None, kw.get("w_dim")) or mapping.get("embed_features"):
        problems.append("its mapping network has non-default widths")
    if problems:
        raise CheckpointError(f"{name} cannot be written as a rosinality generator: {'; '.join(problems)}")
    if syn.get("conv_clamp") is not None:
        notes.append(
            f"{name}: conv_clamp={syn.get('conv_clamp')} is dropped (rosinality does not clamp activations)"
        )
    if mapping.get("lr_multiplier", 0.01) != 0.01:
        notes.append(
            f"{name}: mapping lr_multiplier {mapping.get('lr_multiplier')} -> pass lr_mlp to rosinality"
        )


def generator_to_rosinality(sd: Mapping[str, torch.Tensor], init_kwargs: Mapping[str, Any]) -> dict:
    """Our generator state dict -> a rosinality ``Generator`` state dict (inverse of the import)."""
    out: dict[str, torch.Tensor] = {}
    res = init_kwargs["img_resolution"]

    def get(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"the generator has no `{key}`")
        return sd[key].detach().to("cpu", torch.float32).clone()

    for i in range(init_kwargs.get("mapping_kwargs", {}).get("num_layers", 8)):
        out[f"style.{i + 1}.weight"] = get(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = get(f"mapping.fc{i}.bias")
    out["input.input"] = get("synthesis.b4.const")[None]

    def conv(src: str, dst: str, up: bool) -> None:
        out[f"{dst}.conv.weight"] = get(f"{src}.weight")[None]
        if up:
            out[f"{dst}.conv.blur.kernel"] = get(f"{src}.resample_filter") * 4
        out[f"{dst}.conv.modulation.weight"] = get(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = get(f"{src}.affine.bias")
        out[f"{dst}.noise.weight"] = get(f"{src}.noise_strength").reshape(1)
        out[f"{dst}.activate.bias"] = get(f"{src}.bias")

    def torgb(src: str, dst: str, up_filter: str | None) -> None:
        out[f"{dst}.bias"] = get(f"{src}.bias").reshape(1, -1, 1, 1)
        if up_filter is not None:
            out[f"{dst}.upsample.kernel"] = get(up_filter) * 4
        out[f"{dst}.conv.weight"] = get(f"{src}.weight")[None]
        out[f"{dst}.conv.modulation.weight"] = get(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = get(f"{src}.affine.bias")

    conv("synthesis.b4.conv1", "conv1", up=False)
    torgb("synthesis.b4.torgb", "to_rgb1", None)
    r, j = 8, 0
    while r <= res:
        conv(f"synthesis.b{r}.conv0", f"convs.{2 * j}", up=True)
        conv(f"synthesis.b{r}.conv1", f"convs.{2 * j + 1}", up=False)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{j}", f"synthesis.b{r}.resample_filter")
        r, j = r * 2, j + 1
    for n, (prefix, r) in enumerate(_generator_layers(res)):
        out[f"noises.noise_{n}"] = get(f"{prefix}.noise_const").reshape(1, 1, r, r)
    return out


def _check_discriminator_for_rosinality(kw: Mapping[str, Any], notes: list[str]) -> None:
    epi = kw.get("epilogue_kwargs") or {}
    problems = []
    if kw.get("c_dim", 0):
        problems.append("it is conditional (c_dim > 0)")
    if kw.get("architecture", "resnet") != "resnet":
        problems.append(f"architecture {kw.get('architecture')!r} (rosinality uses 'resnet')")
    if epi.get("mbstd_group_size", 4) != 4 or epi.get("mbstd_num_channels", 1) != 1:
        problems.append("its minibatch-std layer is not group 4 / 1 feature")
    if problems:
        raise CheckpointError(f"D cannot be written as a rosinality discriminator: {'; '.join(problems)}")
    if kw.get("conv_clamp", 256) is not None:
        notes.append(f"D: conv_clamp={kw.get('conv_clamp', 256)} is dropped (rosinality does not clamp)")


def discriminator_to_rosinality(sd: Mapping[str, torch.Tensor], init_kwargs: Mapping[str, Any]) -> dict:
    """Our discriminator state dict -> a rosinality ``Discriminator`` state dict."""
    out: dict[str, torch.Tensor] = {}
    res = init_kwargs["img_resolution"]

    def get(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"the discriminator has no `{key}`")
        return sd[key].detach().to("cpu", torch.float32).clone()

    out["convs.0.0.weight"] = get(f"b{res}.fromrgb.weight")
    out["convs.0.1.bias"] = get(f"b{res}.fromrgb.bias")
    r, i = res, 1
    while r >= 8:
        out[f"convs.{i}.conv1.0.weight"] = get(f"b{r}.conv0.weight")
        out[f"convs.{i}.conv1.1.bias"] = get(f"b{r}.conv0.bias")
        out[f"convs.{i}.conv2.0.kernel"] = get(f"b{r}.conv1.resample_filter")
        out[f"convs.{i}.conv2.1.weight"] = get(f"b{r}.conv1.weight")
        out[f"convs.{i}.conv2.2.bias"] = get(f"b{r}.conv1.bias")
        out[f"convs.{i}.skip.0.kernel"] = get(f"b{r}.skip.resample_filter")
        out[f"convs.{i}.skip.1.weight"] = get(f"b{r}.skip.weight")
        r, i = r // 2, i + 1
    out["final_conv.0.weight"] = get("b4.conv.weight")
    out["final_conv.1.bias"] = get("b4.conv.bias")
    out["final_linear.0.weight"] = get("b4.fc.weight")
    out["final_linear.0.bias"] = get("b4.fc.bias")
    out["final_linear.1.weight"] = get("b4.out.weight")
    out["final_linear.1.bias"] = get("b4.out.bias")
    return out


def to_rosinality(
    records: Mapping[str, NetworkRecord | None], meta: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Build a rosinality checkpoint dict from records of ``G``, ``D``, ``G_ema``. Returns (ckpt, notes)."""
    notes: list[str] = []
    ckpt: dict[str, Any] = {}
    gen = records.get("G_ema") or records.get("G")
    if gen is None:
        raise CheckpointError("a rosinality checkpoint needs a generator (G or G_ema)")
    for name, ros_name in (("G", "g"), ("G_ema", "g_ema")):
        rec = records.get(name)
        if rec is None:
            continue
        _check_generator_for_rosinality(rec.init_kwargs, name, notes)
        ckpt[ros_name] = generator_to_rosinality(rec.state_dict, rec.init_kwargs)
    if records.get("D") is not None:
        d = records["D"]
        _check_discriminator_for_rosinality(d.init_kwargs, notes)
        ckpt["d"] = discriminator_to_rosinality(d.state_dict, d.init_kwargs)
    if "mapping.w_avg" in gen.state_dict:
        ckpt["latent_avg"] = gen.state_dict["mapping.w_avg"].detach().to("cpu", torch.float32).clone()
        g = records.get("G")
        if g is not None and g is not gen and "mapping.w_avg" in g.state_dict:
            if not torch.equal(g.state_dict["mapping.w_avg"].float().cpu(), ckpt["latent_avg"]):
                notes.append("G's own w_avg is not kept: rosinality stores one latent_avg (G_ema's)")
    kw = gen.init_kwargs
    multiplier = _rosinality_channel_multiplier(kw.get("synthesis_kwargs") or {})
    if multiplier is None:
        notes.append(
            "the channel widths match no rosinality channel_multiplier (stock rosinality code fixes 512 "
            "channels up to 32px); its Generator must be built with these widths to load the file"
        )
    args = argparse.Namespace(
        size=kw["img_resolution"],
        latent=kw["w_dim"],
        n_mlp=(kw.get("mapping_kwargs") or {}).get("num_layers", 8),
        channel_multiplier=multiplier,
    )
    previous = _args_dict((meta or {}).get("args"))
    for key, value in previous.items():  # keep the original training arguments where they exist
        if not hasattr(args, key) or getattr(args, key) is None:
            setattr(args, key, value)
    ckpt["args"] = args
    return ckpt, notes


def save_rosinality(
    path: str | os.PathLike[str],
    records: Mapping[str, NetworkRecord | None],
    meta: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write records as a rosinality ``.pt`` (atomically). Returns notes about what was dropped."""
    ckpt, notes = to_rosinality(records, meta)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(path, lambda f: write_chunks(f, buf.getbuffer()))
    return notes
