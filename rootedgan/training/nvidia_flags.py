"""NVIDIA's ``train.py`` flags (stylegan2-ada-pytorch) as ``rootedgan finetune`` options.

:func:`translate` rewrites the flags whose meaning is the same (``--data``, ``--outdir``, ``--batch`` as the
global batch, ``--kimg``, ``--gamma``, ``--cfg`` presets, ...) into ours and says what it did; a flag with no
equivalent is a one-line error that says what to use instead. The README has the whole table.
"""

from __future__ import annotations

from rootedgan.errors import UserError

#: NVIDIA's flag -> our option (the value is passed on; booleans as true/false).
SAME = {
    "--outdir": "--trainer.default_root_dir",
    "--data": "--data.path",
    "--cond": "--data.use_labels",
    "--subset": "--data.max_images",
    "--mirror": "--data.xflip",
    "--gamma": "--model.reg.r1_gamma",
    "--kimg": "--model.total_kimg",
    "--p": "--model.augment.p",
    "--target": "--model.augment.ada_target",
    "--augpipe": "--model.augment.preset",
    "--resume": "--model.network",  # NVIDIA resumes from a network pickle: our pretrained start
    "--freezed": "--model.freeze_d",
    "--nhwc": "--model.speed.channels_last",
    "--allow-tf32": "--model.speed.tf32",
    "--workers": "--data.num_workers",
    "--glr": "--model.optim.g_lr",  # stylegan3's train.py
    "--dlr": "--model.optim.d_lr",
    "--tick": "--progress.tick_kimg",
}
#: NVIDIA's --cfg presets (its cfg_specs): global batch, lr, R1 gamma, G_ema half-life (kimg), ramp-up.
PRESETS = {
    "stylegan2": (32, 0.002, 10.0, 10.0, None),
    "paper256": (64, 0.0025, 1.0, 20.0, None),
    "paper512": (64, 0.0025, 0.5, 20.0, None),
    "paper1024": (32, 0.002, 2.0, 10.0, None),
    "cifar": (64, 0.0025, 0.01, 500.0, 0.05),
}
AUG = {"noaug": "none", "ada": "ada", "fixed": "fixed"}
_ARCHITECTURE = "the architecture comes with the network (--resume), or model.g_kwargs / model.d_kwargs"
OTHER = {
    "--metrics": "add rootedgan.metrics.FIDCallback under trainer.callbacks (README 'FID / KID')",
    "--fp32": "fp16 layers come with the network (num_fp16_res); --trainer.precision 32-true for the rest",
    "--batch-gpu": "there is no gradient accumulation: --batch is split over --gpus",
    "--desc": "runs are numbered lightning_logs/version_N under --outdir; name a run with --outdir",
    **dict.fromkeys(("--cbase", "--cmax", "--map"), _ARCHITECTURE),
    "--mbstd-group": "the architecture comes with the network (--resume), or model.d_kwargs",
    "--nobench": "cuDNN autotuning is --trainer.benchmark true|false",
    "--dry-run": "use --print_config",
    "-n": "use --print_config",
}


def _bool(flag: str, value: str) -> str:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return "true"
    if text in ("0", "false", "no", "n", "off"):
        return "false"
    raise UserError(f"{flag} takes a boolean (true/false), got {value!r}")


def _pairs(argv: list[str]) -> list[tuple[str, str | None]]:
    """``argv`` as ``(flag, value)`` for NVIDIA's flags (``--x v`` or ``--x=v``), ``(argument, None)`` for
    everything else; a flag of NVIDIA's without an equivalent is a one-line error."""
    out, i = [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in OTHER:
            raise UserError(f"{flag} (NVIDIA's train.py) has no rootedgan equivalent: {OTHER[flag]}")
        if flag in SAME or flag in ("--gpus", "--batch", "--cfg", "--aug", "--seed", "--snap"):
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{flag} needs a value")
                i, value = i + 1, argv[i + 1]
            out.append((flag, value))
        else:
            out.append((argv[i], None))
        i += 1
    return out


def _one(flag: str, value: str, given: dict[str, str]) -> list[str]:
    """Our arguments for one of NVIDIA's flags (``--batch`` is applied last, by :func:`translate`)."""
    if flag in SAME:
        boolean = flag in ("--cond", "--mirror", "--nhwc", "--allow-tf32")
        return [SAME[flag], _bool(flag, value) if boolean else value]
    if flag == "--aug":
        if value not in AUG:
            raise UserError(f"--aug {value}: NVIDIA's values are {', '.join(AUG)}")
        return ["--model.augment.kind", AUG[value]]
    if flag == "--seed":
        return ["--model.seed", value, "--data.seed", value]
    if flag == "--gpus":
        return ["--trainer.accelerator", "gpu", "--trainer.devices", value]
    if flag == "--snap":  # NVIDIA counts snapshots in ticks of 4 kimg
        return ["--snapshot.snap_kimg", f"{4 * float(value):g}"]
    if value.startswith("stylegan3"):  # --cfg
        raise UserError(
            f"--cfg {value}: rootedgan trains StyleGAN2 networks; use one of {', '.join(PRESETS)}"
        )
    if value not in PRESETS:
        raise UserError(f"--cfg {value}: use one of {', '.join(PRESETS)} (auto depends on NVIDIA's data)")
    batch, lr, gamma, ema, ramp = PRESETS[value]
    given.setdefault("--batch", str(batch))
    return [
        *("--model.optim.g_lr", str(lr), "--model.optim.d_lr", str(lr), "--model.reg.r1_gamma", str(gamma)),
        *("--model.ema.kimg", str(ema), "--model.ema.rampup", "null" if ramp is None else str(ramp)),
    ]


def translate(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(our argv, one line per NVIDIA flag translated)``; a flag without an equivalent raises UserError.
    Each translation takes the place of its flag, so a later option still overrides it."""
    pairs = _pairs(argv)
    given = {flag: value for flag, value in pairs if value is not None}
    out: list[str] = []
    done: list[str] = []
    for flag, value in pairs:
        if value is None:
            out.append(flag)
        elif flag != "--batch":
            new = _one(flag, value, given)
            out += new
            done.append(f"{flag} {value} -> {' '.join(new)}")
    if "--batch" in given:
        gpus, batch = int(given.get("--gpus", "1")), int(given["--batch"])
        if batch % gpus:
            raise UserError(f"--batch {batch} (global) does not divide over --gpus {gpus}")
        out += ["--data.batch_size", str(batch // gpus)]
        done.append(f"--batch {batch} (global) -> --data.batch_size {batch // gpus} per device x {gpus}")
    return out, done
