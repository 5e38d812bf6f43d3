"""The settings of a finetune, in typed sections (``model.optim``, ``model.reg``, ... in the YAML config).

Each section is a dataclass that checks itself when built (types and ranges: a value read from a YAML file or
a checkpoint is checked the same way) and is stored in checkpoints as a plain dict. The loss is its own object
(:mod:`rootedgan.training.losses`); orthogonal finetuning has ``OrthogonalConfig``.

Settings of earlier versions were flat (``model.g_lr``); :data:`MOVED` says where each one lives now, so an
old config fails with one line naming the new key, and an old checkpoint's settings are read by
:func:`migrate`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

from rootedgan.errors import SettingError
from rootedgan.training.losses import make_loss

OPTIMIZERS = ("adam", "golden")
AUGMENT_KINDS = ("none", "ada", "fixed", "diffaugment")
S = TypeVar("S", bound="Section")


def check_number(
    where: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise :class:`SettingError` unless ``value`` is a finite number (an integer with ``integer``) in the
    range ``low .. high`` (bounds excluded with ``open_*``); None passes when ``optional``."""
    if value is None and optional:
        return
    kinds = int if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value > low or (value == low and not open_low))
    ok = ok and (high is None or value < high or (value == high and not open_high))
    if not ok:
        signs = ((">" if open_low else ">=", low), ("<" if open_high else "<=", high))
        bounds = " and ".join(f"{sign} {bound:g}" for sign, bound in signs if bound is not None)
        what = "an integer" if integer else "a finite number"
        also = " or null" if optional else ""
        raise SettingError(f"{where} must be {what} {bounds}{also}, got {value!r}".replace("  ", " "))


def check_choice(where: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise SettingError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass
class Section:
    """A typed section of the model settings: built from itself, a mapping or None. (A dataclass itself, so
    that jsonargparse shows its subclasses as plain nested options, not as ``class_path``s.)"""

    where: ClassVar[str]

    @classmethod
    def from_any(cls: type[S], value: Any) -> S:
        """A checked copy of ``value``: an instance, a mapping (YAML, checkpoint) or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return dataclasses.replace(value)
        if not isinstance(value, Mapping):
            raise SettingError(f"{cls.where} must be a mapping of settings, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(map(str, set(value) - known))
        if unknown:
            raise SettingError(
                f"{cls.where} has no setting {', '.join(unknown)}; it has {', '.join(sorted(known))}"
            )
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (checkpoints, hparams.yaml, provenance)."""
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class OptimConfig(Section):
    """Optimizers (``model.optim``).

    Args:
        g_lr: generator learning rate.
        d_lr: discriminator learning rate.
        betas: Adam betas (StyleGAN: 0, 0.99).
        g_optimizer: ``adam`` (StyleGAN's) or ``golden`` (the golden-ratio SGD preset, README "Optimizers").
        d_optimizer: ``adam`` or ``golden`` for D.
    """

    where: ClassVar[str] = "model.optim"
    g_lr: float = 0.002
    d_lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    g_optimizer: str = "adam"
    d_optimizer: str = "adam"

    def __post_init__(self) -> None:
        check_number(f"{self.where}.g_lr", self.g_lr, 0, open_low=True)
        check_number(f"{self.where}.d_lr", self.d_lr, 0, open_low=True)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise SettingError(f"{self.where}.betas must be two numbers, got {self.betas!r}")
        for beta in self.betas:
            check_number(f"{self.where}.betas", beta, 0, 1, open_high=True)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check_choice(f"{self.where}.g_optimizer", self.g_optimizer, OPTIMIZERS)
        check_choice(f"{self.where}.d_optimizer", self.d_optimizer, OPTIMIZERS)


@dataclass
class RegConfig(Section):
    """StyleGAN2's regularization (``model.reg``): R1, path length (both lazy) and style mixing.

    Args:
        r1_gamma: R1 weight gamma (0 disables R1).
        r1_interval: lazy R1 interval in steps (0: every step).
        pl_weight: path-length regularization weight (0 disables it).
        pl_interval: lazy path-length interval in steps (0: every step).
        pl_decay: decay of the running path-length mean.
        pl_batch_shrink: path length runs on batch // pl_batch_shrink samples.
        style_mixing_prob: probability of style mixing per batch.
    """

    where: ClassVar[str] = "model.reg"
    r1_gamma: float = 10.0
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing_prob: float = 0.9

    def __post_init__(self) -> None:
        check_number(f"{self.where}.r1_gamma", self.r1_gamma, 0)
        check_number(f"{self.where}.r1_interval", self.r1_interval, 0, integer=True)
        check_number(f"{self.where}.pl_weight", self.pl_weight, 0)
        check_number(f"{self.where}.pl_interval", self.pl_interval, 0, integer=True)
        check_number(f"{self.where}.pl_decay", self.pl_decay, 0, 1)
        check_number(f"{self.where}.pl_batch_shrink", self.pl_batch_shrink, 1, integer=True)
        check_number(f"{self.where}.style_mixing_prob", self.style_mixing_prob, 0, 1)

    @property
    def g_interval(self) -> int:
        """G's lazy-regularization interval (0: no path length)."""
        return self.pl_interval if self.pl_weight > 0 else 0

    @property
    def d_interval(self) -> int:
        """D's lazy-regularization interval (0: no R1)."""
        return self.r1_interval if self.r1_gamma > 0 else 0


@dataclass
class EmaConfig(Section):
    """G_ema (``model.ema``).

    Args:
        kimg: half-life of G_ema in thousands of images.
        rampup: ramp the half-life up to ``kimg`` over ``rampup * cur_nimg`` (null: off).
    """

    where: ClassVar[str] = "model.ema"
    kimg: float = 10.0
    rampup: float | None = None

    def __post_init__(self) -> None:
        check_number(f"{self.where}.kimg", self.kimg, 0, open_low=True)
        check_number(f"{self.where}.rampup", self.rampup, 0, optional=True)


@dataclass
class AugmentConfig(Section):
    """What D sees, reals and fakes, R1 included (``model.augment``; README "Augmentation").

    Args:
        kind: ``none``, ``ada`` (ADA pipeline, p adapted), ``fixed`` (ADA pipeline at constant ``p``) or
            ``diffaugment``.
        p: initial (``ada``) or constant (``fixed``) probability of each transform, in [0, 1).
        preset: ADA transforms: ``bgc`` (blit, geometry, colour), ``bg``, ``bgcf``, ``bgcfn``, ``bgcfnc``, or
            a comma-separated list of transform names.
        ada_target: ADA's target for ``E[sign(D(real))]`` (NVIDIA: 0.6).
        ada_interval: adjust p every this many D steps.
        ada_kimg: thousands of images for p to move by 1 (NVIDIA: 500; 100 is customary when finetuning).
        diffaugment_policy: DiffAugment transforms, a comma-separated subset of color,translation,cutout.
    """

    where: ClassVar[str] = "model.augment"
    kind: str = "none"
    p: float = 0.0
    preset: str = "bgc"
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0
    diffaugment_policy: str = "color,translation,cutout"

    def __post_init__(self) -> None:
        check_choice(f"{self.where}.kind", self.kind, AUGMENT_KINDS)
        check_number(f"{self.where}.p", self.p, 0, 1, open_high=True)
        check_number(f"{self.where}.ada_target", self.ada_target, -1, 1)
        check_number(f"{self.where}.ada_interval", self.ada_interval, 1, integer=True)
        check_number(f"{self.where}.ada_kimg", self.ada_kimg, 0, open_low=True)
        for name in ("preset", "diffaugment_policy"):
            if not isinstance(getattr(self, name), str):
                raise SettingError(f"{self.where}.{name} must be a string, got {getattr(self, name)!r}")


@dataclass
class GuardConfig(Section):
    """What a non-finite loss or gradient does (``model.guard``; README "Non-finite steps").

    Args:
        max_bad_steps: stop after this many consecutive steps with a skipped (non-finite) phase.
        max_bad_fraction: a run that ends with more than this fraction of its phases skipped has diverged: it
            ends with an error (after its final snapshot) instead of success.
    """

    where: ClassVar[str] = "model.guard"
    max_bad_steps: int = 10
    max_bad_fraction: float = 0.05

    def __post_init__(self) -> None:
        check_number(f"{self.where}.max_bad_steps", self.max_bad_steps, 1, integer=True)
        check_number(f"{self.where}.max_bad_fraction", self.max_bad_fraction, 0, 1)


@dataclass
class SpeedConfig(Section):
    """Speed levers (``model.speed``), each the same training step up to float rounding.

    Args:
        channels_last: the fp16 blocks of G and D compute in channels-last memory format (NVIDIA's
            ``fp16_channels_last``).
        tf32: allow TF32 in fp32 matrix products and convolutions (true), forbid it (false, as NVIDIA's
            training loop does), or leave PyTorch's setting (null).
        fused_optimizer: PyTorch's fused Adam/SGD (one kernel for all parameters).
        sync_free: decide on the device whether a phase's update is applied (the fused optimizer skips a
            non-finite phase whole, state included) and read the counters only with the logs: no host
            synchronisation inside a training step. Implies the fused optimizer.
    """

    where: ClassVar[str] = "model.speed"
    channels_last: bool = False
    tf32: bool | None = None
    fused_optimizer: bool = False
    sync_free: bool = False

    def __post_init__(self) -> None:
        for name in ("channels_last", "tf32", "fused_optimizer", "sync_free"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name == "tf32")):
                raise SettingError(f"{self.where}.{name} must be true or false, got {value!r}")


#: Flat settings of earlier versions -> where they live now.
MOVED = {
    **{name: f"optim.{name}" for name in ("g_lr", "d_lr", "betas", "g_optimizer", "d_optimizer")},
    **{name: f"reg.{name}" for name in ("r1_gamma", "r1_interval", "pl_weight", "pl_interval", "pl_decay")},
    "pl_batch_shrink": "reg.pl_batch_shrink",
    "style_mixing_prob": "reg.style_mixing_prob",
    "ema_kimg": "ema.kimg",
    "ema_rampup": "ema.rampup",
    "augment_p": "augment.p",
    "augment_preset": "augment.preset",
    **{name: f"augment.{name}" for name in ("ada_target", "ada_interval", "ada_kimg", "diffaugment_policy")},
    "max_bad_steps": "guard.max_bad_steps",
    "max_bad_fraction": "guard.max_bad_fraction",
    **{name: f"speed.{name}" for name in ("channels_last", "tf32", "fused_optimizer")},
    **{name: f"loss.{name}" for name in ("k", "subtract_k", "max_grad")},
}
#: Flat settings of earlier versions that have no one-to-one new key, with what to write instead.
GONE = {
    "mode": "orthogonal finetuning is on when model.orthogonal is set (`orthogonal: {}` for its defaults)",
    "torch_compile": "the torch.compile lever was removed (measured slower than eager on an H200)",
}


def moved_hint(key: str) -> str | None:
    """One line for a flat model setting of an earlier version (``k``, ``g_lr``, ...), else None."""
    if key in GONE:
        return f"model.{key} is gone: {GONE[key]}"
    if key in MOVED:
        new = MOVED[key]
        if new.startswith("loss."):
            return f"model.{key} moved into model.loss: write e.g. `loss: {{name: rooted, {new[5:]}: ...}}`"
        return f"model.{key} moved: use model.{new}"
    return None


def migrate(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The model settings of an earlier version's checkpoint (flat keys: ``g_lr``, ``loss`` + ``k``, ``mode``)
    in today's sections; today's settings pass unchanged."""
    if not any(key in hparams for key in (*MOVED, *GONE)) and not isinstance(hparams.get("augment"), str):
        return dict(hparams)
    out = {k: v for k, v in hparams.items() if k not in MOVED and k not in GONE}
    for key, target in MOVED.items():
        section, _, name = target.partition(".")
        if key in hparams and section != "loss":
            out.setdefault(section, {})[name] = hparams[key]
    out["augment"] = {**out.get("augment", {}), "kind": hparams.get("augment", "none")}
    out["orthogonal"] = (hparams.get("orthogonal") or {}) if hparams.get("mode") == "orthogonal" else None
    loss = make_loss(hparams.get("loss", "logistic")).spec()  # the default of those versions
    if loss["name"] == "rooted":
        loss.update({k: hparams[k] for k in ("subtract_k", "max_grad") if k in hparams})
        if ":" not in str(hparams.get("loss")) and "k" in hparams:
            loss["k"] = hparams["k"]
    out["loss"] = loss
    return out
