"""rosinality/stylegan2-pytorch checkpoints (``.pt``: a dict with ``g``, ``d``, ``g_ema`` state dicts,
``latent_avg``, ``args``, ...) <-> our networks. Read with ``torch.load(weights_only=True)`` plus
``argparse.Namespace``; keys map one-to-one (one table for both directions, verified in
``fixtures/rosinality/README.md``) and the architecture comes from the shapes."""

from __future__ import annotations

import argparse
import io
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from rootedgan.checkpoints.records import (
    DISCRIMINATOR,
    GENERATOR,
    W_AVG_SAMPLES,
    NetworkRecord,
    atomic_write,
    check_metadata,
    first_line,
    jsonable,
    refused_global,
    write_chunks,
)
from rootedgan.errors import CheckpointError, UnsafeCheckpointError
from rootedgan.networks.layers import DEFAULT_RESAMPLE_KERNEL
from stylegan_ops import setup_filter

FORMAT = "rosinality-pt"

# rosinality `channel_multiplier=2` is NVIDIA's default width schedule.
NVIDIA_CHANNEL_BASE = 32768
# rosinality's networks have no activation clamp, no fp16 layers, and a minibatch-std of group 4, 1 feature.
_FIXED = {"num_fp16_res": 0, "conv_clamp": None}
_MBSTD = {"mbstd_group_size": 4, "mbstd_num_channels": 1}


def torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` with ``argparse.Namespace`` allowed; errors made clear."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} does not exist") from err
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, BadZipFile: never a raw stack trace
        what = refused_global(err)
        if what is not None:
            raise UnsafeCheckpointError(
                f"refused to load {path}: this torch.save archive references {what}, which is not on the "
                "allow-list of tensor and container types; the file was not loaded"
            ) from err
        raise CheckpointError(
            f"{path} is truncated or corrupt: it starts like a torch.save archive but cannot be read "
            f"({first_line(err)}). Download or copy it again."
        ) from err


def is_rosinality(ckpt: Any) -> bool:
    """Whether a ``torch.load``-ed object looks like a rosinality checkpoint."""
    if not isinstance(ckpt, Mapping):
        return False
    g = ckpt.get("g_ema", ckpt.get("g"))
    return isinstance(g, Mapping) and "input.input" in g and "style.1.weight" in g


def infer_channel_params(widths: Mapping[int, int], what: str = "network") -> tuple[int, int]:
    """``(channel_base, channel_max)`` with ``min(channel_base // r, channel_max) == widths[r]`` for all r.

    Prefers NVIDIA's default ``channel_base=32768`` when it fits, else the smallest value that does.
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


def generator_kwargs(sd: Mapping[str, torch.Tensor], args: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``Generator`` kwargs for a rosinality generator state dict (from shapes; ``args`` cross-checks)."""
    w_dim, z_dim = _shape(sd, "style.1.weight", "generator")
    n_convs = _count(sd, r"convs\.(\d+)\.conv\.weight$")
    if n_convs % 2:
        raise CheckpointError(f"the rosinality generator has an odd number of convs ({n_convs})")
    res = 4 * 2 ** (n_convs // 2)
    widths = {4: _shape(sd, "input.input", "generator")[1]}
    for j in range(n_convs // 2):
        widths[8 * 2**j] = _shape(sd, f"convs.{2 * j}.conv.weight", "generator")[1]
    if args.get("size") not in (None, res):
        raise CheckpointError(f"the rosinality args say size {args['size']} but the generator is {res}px")
    base, cmax = infer_channel_params(widths, "generator")
    mapping_kwargs: dict[str, Any] = {"num_layers": _count(sd, r"style\.(\d+)\.weight$")}
    lr_mlp = args.get("lr_mlp")
    if isinstance(lr_mlp, int | float) and lr_mlp != 0.01:
        mapping_kwargs["lr_multiplier"] = float(lr_mlp)
    return {
        "z_dim": z_dim,
        "c_dim": 0,
        "w_dim": w_dim,
        "img_resolution": res,
        "img_channels": _shape(sd, "to_rgb1.conv.weight", "generator")[1],
        "mapping_kwargs": mapping_kwargs,
        "synthesis_kwargs": {"channel_base": base, "channel_max": cmax, **_FIXED},
    }


def discriminator_kwargs(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Our ``Discriminator`` kwargs for a rosinality discriminator state dict (from shapes)."""
    res = 4 * 2 ** _count(sd, r"convs\.(\d+)\.conv1\.0\.weight$")
    c_res, img_channels = _shape(sd, "convs.0.0.weight", "discriminator")[:2]
    widths = {res: c_res}
    for i, r in enumerate(_down_resolutions(res), start=1):
        widths[r // 2] = _shape(sd, f"convs.{i}.conv2.1.weight", "discriminator")[0]
    final_in = _shape(sd, "final_conv.0.weight", "discriminator")[1]
    if final_in - widths[4] != _MBSTD["mbstd_num_channels"]:
        raise CheckpointError(
            f"the rosinality discriminator's final conv takes {final_in} channels; expected {widths[4]} + 1 "
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
        **_FIXED,
        "epilogue_kwargs": dict(_MBSTD),
    }


# ----------------------------------------------------------------------------------------------------------
# One key table for both directions: (our key, rosinality key, how the tensor changes). "filter" entries pair
# our ``resample_filter`` buffers with rosinality's blur kernels (None: rosinality stores none).

Entry = tuple[str, str | None, str]
Reshape = Callable[[torch.Tensor], torch.Tensor]
_RESHAPES: dict[str, tuple[Reshape, Reshape]] = {
    "": (lambda t: t, lambda t: t),  # (to ours, to rosinality)
    "batch": (lambda t: t[0], lambda t: t[None]),  # modulated weights and the constant have a batch axis
    "scalar": (lambda t: t.reshape(()), lambda t: t.reshape(1)),
    "rgb_bias": (lambda t: t.reshape(-1), lambda t: t.reshape(1, -1, 1, 1)),
}


def _up_resolutions(res: int) -> list[int]:
    """8, 16, ..., res: the generator blocks after the 4x4 one."""
    return [2**k for k in range(3, int(math.log2(res)) + 1)]


def _down_resolutions(res: int) -> list[int]:
    """res, res/2, ..., 8: the discriminator blocks before the 4x4 epilogue."""
    return [2**k for k in range(int(math.log2(res)), 2, -1)]


def _synthesis_convs(res: int) -> list[tuple[str, str, int]]:
    """(our layer, rosinality layer, resolution) of every synthesis conv, in rosinality's (noise) order."""
    layers = [("synthesis.b4.conv1", "conv1", 4)]
    for j, r in enumerate(_up_resolutions(res)):
        layers += [
            (f"synthesis.b{r}.conv0", f"convs.{2 * j}", r),
            (f"synthesis.b{r}.conv1", f"convs.{2 * j + 1}", r),
        ]
    return layers


def _modulated(ours: str, theirs: str) -> list[Entry]:
    return [
        (f"{ours}.weight", f"{theirs}.conv.weight", "batch"),
        (f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight", ""),
        (f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias", ""),
    ]


def _generator_table(res: int, num_layers: int) -> list[Entry]:
    """The generator's table (noise and ``w_avg`` apart); its blur kernels are 4x our filters."""
    table = [
        (f"mapping.fc{i}.{p}", f"style.{i + 1}.{p}", "")
        for i in range(num_layers)
        for p in ("weight", "bias")
    ]
    table += [
        ("synthesis.b4.const", "input.input", "batch"),
        ("synthesis.b4.resample_filter", None, "filter"),
    ]
    for ours, theirs, _ in _synthesis_convs(res):
        table += _modulated(ours, theirs)
        table += [
            (f"{ours}.noise_strength", f"{theirs}.noise.weight", "scalar"),
            (f"{ours}.bias", f"{theirs}.activate.bias", ""),
            (
                f"{ours}.resample_filter",
                f"{theirs}.conv.blur.kernel" if ours.endswith("0") else None,
                "filter",
            ),
        ]
    torgbs = [("synthesis.b4", "to_rgb1", None)]
    torgbs += [
        (f"synthesis.b{r}", f"to_rgbs.{j}", "upsample.kernel") for j, r in enumerate(_up_resolutions(res))
    ]
    for block, theirs, kernel in torgbs:
        table += [
            *_modulated(f"{block}.torgb", theirs),
            (f"{block}.torgb.bias", f"{theirs}.bias", "rgb_bias"),
        ]
        if kernel:
            table.append((f"{block}.resample_filter", f"{theirs}.{kernel}", "filter"))
    return table


def _layer(
    ours: str, weight: str, bias: str | None, kernel: str | None = None, filtered: bool = True
) -> list[Entry]:
    """The entries of one of our layers: weight, bias (if any), resampling filter (if ours has one)."""
    entries: list[Entry] = [(f"{ours}.weight", weight, "")]
    entries += [(f"{ours}.bias", bias, "")] if bias else []
    return entries + ([(f"{ours}.resample_filter", kernel, "filter")] if filtered else [])


def _discriminator_table(res: int) -> list[Entry]:
    """The discriminator's table; its blur kernels equal our filters."""
    table = _layer(f"b{res}.fromrgb", "convs.0.0.weight", "convs.0.1.bias")
    for i, r in enumerate(_down_resolutions(res), start=1):
        c = f"convs.{i}"
        table += [(f"b{r}.resample_filter", None, "filter")]
        table += _layer(f"b{r}.conv0", f"{c}.conv1.0.weight", f"{c}.conv1.1.bias")
        table += _layer(f"b{r}.conv1", f"{c}.conv2.1.weight", f"{c}.conv2.2.bias", f"{c}.conv2.0.kernel")
        table += _layer(f"b{r}.skip", f"{c}.skip.1.weight", None, f"{c}.skip.0.kernel")
    table += _layer("b4.conv", "final_conv.0.weight", "final_conv.1.bias")
    table += _layer("b4.fc", "final_linear.0.weight", "final_linear.0.bias", filtered=False)
    return table + _layer("b4.out", "final_linear.1.weight", "final_linear.1.bias", filtered=False)


class _Tensors:
    """Reads float32 CPU copies from a state dict by key; :meth:`finish` reports the keys nobody read."""

    def __init__(self, sd: Mapping[str, torch.Tensor], what: str) -> None:
        self.sd, self.what, self.used = sd, what, set()

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise CheckpointError(f"the {self.what} state dict has no `{key}`")
        self.used.add(key)
        t = self.sd[key]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"`{key}` in the {self.what} is not a tensor")
        return t.detach().to("cpu", torch.float32).clone()

    def finish(self) -> None:
        left = sorted(set(self.sd) - self.used)
        if left:
            more = f" ... and {len(left) - 8} more" if len(left) > 8 else ""
            raise CheckpointError(
                f"the {self.what} has tensors this converter does not know: {', '.join(left[:8])}{more}"
            )


def _to_ours(
    take: _Tensors, table: list[Entry], gain: float, kernels_required: bool
) -> dict[str, torch.Tensor]:
    """Our state dict from the table; rosinality's blur kernels must be the standard one (``gain`` x ours)."""
    out: dict[str, torch.Tensor] = {}
    f = setup_filter(DEFAULT_RESAMPLE_KERNEL)
    for ours, theirs, how in table:
        if how != "filter":
            out[ours] = _RESHAPES[how][0](take(theirs))
            continue
        out[ours] = f.clone()
        if theirs is not None and (kernels_required or theirs in take.sd):
            kernel = take(theirs)
            if tuple(kernel.shape) != (4, 4) or not torch.allclose(kernel, f * gain, rtol=1e-5, atol=1e-6):
                raise CheckpointError(
                    f"`{theirs}` is not the standard [1, 3, 3, 1] blur kernel; custom kernels are not "
                    "supported"
                )
    return out


def _to_rosinality(take: _Tensors, table: list[Entry], gain: float) -> dict[str, torch.Tensor]:
    return {
        theirs: take(ours) * gain if how == "filter" else _RESHAPES[how][1](take(ours))
        for ours, theirs, how in table
        if theirs is not None
    }


def _generator_record(
    sd: Mapping[str, Any], args: Mapping[str, Any], latent_avg: Any
) -> tuple[NetworkRecord, list[str]]:
    kwargs = generator_kwargs(sd, args)
    res, take = kwargs["img_resolution"], _Tensors(sd, "rosinality generator")
    out = _to_ours(take, _generator_table(res, kwargs["mapping_kwargs"]["num_layers"]), 4.0, False)
    if latent_avg is not None:
        out["mapping.w_avg"] = latent_avg.detach().to("cpu", torch.float32).reshape(-1).clone()
    gen, noise_missing = torch.Generator().manual_seed(0), False
    for n, (ours, _, r) in enumerate(_synthesis_convs(res)):
        key = f"noises.noise_{n}"
        noise_missing |= key not in sd
        out[f"{ours}.noise_const"] = (
            take(key).reshape(r, r) if key in sd else torch.randn([r, r], generator=gen)
        )
    take.finish()
    note = "the checkpoint stores no fixed noise buffers; drew new ones (seed 0) for noise_mode='const'"
    return NetworkRecord(GENERATOR, kwargs, out), [note] if noise_missing else []


def _discriminator_record(sd: Mapping[str, Any]) -> NetworkRecord:
    kwargs = discriminator_kwargs(sd)
    take = _Tensors(sd, "rosinality discriminator")
    out = _to_ours(take, _discriminator_table(kwargs["img_resolution"]), 1.0, True)
    take.finish()
    return NetworkRecord(DISCRIMINATOR, kwargs, out)


def _args_dict(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    return dict(args) if isinstance(args, Mapping) else {}


def read_rosinality(
    ckpt: Mapping[str, Any], source: str = ""
) -> tuple[dict[str, NetworkRecord | None], dict[str, Any]]:
    """Convert a loaded rosinality checkpoint into records for ``G``, ``D``, ``G_ema`` plus metadata.

    Without ``latent_avg`` the generator records have no ``mapping.w_avg``; the loader estimates it.
    """
    where = source or "the file"
    if not is_rosinality(ckpt):
        raise CheckpointError(f"{where} is not a rosinality StyleGAN2 checkpoint")
    args = _args_dict(ckpt.get("args"))
    check_metadata(args, f"{where}: args")
    check_metadata(ckpt.get("ada_aug_p"), f"{where}: ada_aug_p")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"`latent_avg` in {source} is not a tensor")
    records: dict[str, NetworkRecord | None] = {}
    notes: list[str] = []
    for ros_name, name in (("g", "G"), ("d", "D"), ("g_ema", "G_ema")):
        sd = ckpt.get(ros_name)
        if sd is not None and not isinstance(sd, Mapping):
            raise CheckpointError(f"`{ros_name}` in {source} is not a state dict")
        if sd is None:
            records[name] = None
        elif name == "D":
            records[name] = _discriminator_record(sd)
        else:
            records[name], more = _generator_record(sd, args, latent_avg)
            notes += [f"{ros_name}: {n}" for n in more]
    if records["G"] is None and records["G_ema"] is None:
        raise CheckpointError(f"{source} holds no generator (`g` or `g_ema`)")
    if latent_avg is None:
        notes.append(
            f"no latent_avg in the checkpoint: w_avg (the truncation centre) was estimated from "
            f"{W_AVG_SAMPLES} mapped latents"
        )
    meta: dict[str, Any] = {"notes": notes}
    if args:
        meta["args"] = jsonable(args)
    if "ada_aug_p" in ckpt:
        meta["ada_aug_p"] = jsonable(ckpt["ada_aug_p"])
    return records, meta


# ----------------------------------------------------------------------------------------------------------
# The inverse: our (NVIDIA-layout) networks -> a rosinality checkpoint.


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


def _generator_to_rosinality(rec: NetworkRecord) -> dict[str, torch.Tensor]:
    """Our generator record -> a rosinality ``Generator`` state dict (the inverse of the import)."""
    res = rec.init_kwargs["img_resolution"]
    num_layers = (rec.init_kwargs.get("mapping_kwargs") or {}).get("num_layers", 8)
    take = _Tensors(rec.state_dict, "generator")
    out = _to_rosinality(take, _generator_table(res, num_layers), 4.0)
    for n, (ours, _, r) in enumerate(_synthesis_convs(res)):
        out[f"noises.noise_{n}"] = take(f"{ours}.noise_const").reshape(1, 1, r, r)
    return out


def to_rosinality(
    records: Mapping[str, NetworkRecord | None], meta: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Build a rosinality checkpoint dict from records of ``G``, ``D``, ``G_ema``. Returns (ckpt, notes)."""
    notes: list[str] = []
    gen = records.get("G_ema") or records.get("G")
    if gen is None:
        raise CheckpointError("a rosinality checkpoint needs a generator (G or G_ema)")
    ckpt: dict[str, Any] = {}
    for name, ros_name in (("G", "g"), ("G_ema", "g_ema")):
        if records.get(name) is not None:
            _check_generator_for_rosinality(records[name].init_kwargs, name, notes)
            ckpt[ros_name] = _generator_to_rosinality(records[name])
    d = records.get("D")
    if d is not None:
        _check_discriminator_for_rosinality(d.init_kwargs, notes)
        table = _discriminator_table(d.init_kwargs["img_resolution"])
        ckpt["d"] = _to_rosinality(_Tensors(d.state_dict, "discriminator"), table, 1.0)
    w_avg = gen.state_dict.get("mapping.w_avg")  # rosinality keeps one latent_avg: G_ema's, else G's
    if w_avg is not None:
        ckpt["latent_avg"] = w_avg.detach().to("cpu", torch.float32).clone()
        g = records.get("G")
        g_avg = None if g is None or g is gen else g.state_dict.get("mapping.w_avg")
        if g_avg is not None and not torch.equal(g_avg.float().cpu(), ckpt["latent_avg"]):
            notes.append("G's own w_avg is not kept: rosinality stores one latent_avg (G_ema's)")
    kw = gen.init_kwargs
    syn = kw.get("synthesis_kwargs") or {}
    base, cmax = syn.get("channel_base", 32768), syn.get("channel_max", 512)
    multiplier = base // 16384 if cmax == 512 and base % 16384 == 0 and base >= 16384 else None
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
    for key, value in _args_dict((meta or {}).get("args")).items():  # keep the original training arguments
        if getattr(args, key, None) is None:
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
