"""Resuming a run (``--ckpt_path``): a loader that cannot execute code, and settings that never change
silently.

* :func:`read_checkpoint` loads a Lightning checkpoint with ``torch.load(weights_only=True)`` (tensors,
  containers and plain values only: a pickle that asks for anything else is refused with one line). Only
  regular local files are read: a URL must be downloaded first, a FIFO or device is refused.
* :func:`resume_changes` compares the checkpoint's model settings with the ones given now. Settings that
  make a different run (architecture, loss, mode, seed, optimizers, augmentation pipeline) must not
  change: a difference is a :class:`UserError`. The others (learning rates, regularization weights,
  intervals, ``total_kimg``, ...) take the value given now, and each change is reported, so extending a
  finished run is ``--model.total_kimg`` larger.
* :class:`SafeCheckpointIO` is the checkpoint reader and writer of ``rootedgan finetune``: it reads with
  :func:`read_checkpoint` and writes atomically next to the target (a temp file in the same folder,
  fsynced, renamed), so a full disk or a kill never leaves a truncated ``last.ckpt`` behind; the temp
  files a kill leaves are removed when the run is resumed (:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rootedgan.checkpoints.records import check_metadata
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.training.losses import make_loss
from rootedgan.training.orthogonal import OrthogonalConfig
from rootedgan.training.settings import (
    AugmentConfig,
    EmaConfig,
    GuardConfig,
    OptimConfig,
    RegConfig,
    SpeedConfig,
    migrate,
)

#: Model settings a resumed run cannot change (they define the networks, the objective, the optimizer state's
#: layout or the randomness that makes a resume exact): whole settings, or ``section.name``.
FIXED_ON_RESUME = (
    "network",
    "g_kwargs",
    "d_kwargs",
    "loss",
    "orthogonal",
    "seed",
    "optim.g_optimizer",
    "optim.d_optimizer",
    "freeze_d",
    "augment.kind",
    "augment.preset",
    "augment.diffaugment_policy",
)


def _local_file(path: str | os.PathLike[str], what: str) -> Path:
    text = str(path)
    if "://" in text:
        raise UserError(
            f"{what} {text}: only local files are read (a checkpoint can carry code, and rootedgan never "
            "loads one from the network); download it, check where it came from, and pass the file"
        )
    p = Path(text).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {p}: no such file") from None
    except OSError as err:
        raise UserError(f"{what} {p}: cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {p}: not a regular file (a folder, FIFO or device cannot be a checkpoint)")
    return p


def read_checkpoint(path: str | os.PathLike[str], what: str = "--ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint as a dict, read without executing anything from it (see module docstring)."""
    p = _local_file(path, what)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{what} {p}: refused, it is not a plain checkpoint ({first[:200]}); rootedgan loads checkpoints "
            "without executing code, so a file that needs more is not loaded"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as err:
        raise UserError(
            f"{what} {p}: not a readable checkpoint ({type(err).__name__}: {str(err)[:200]}); "
            "is it truncated, or another kind of file? A run's checkpoint is checkpoints/last.ckpt"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(
            f"{what} {p}: not a Lightning training checkpoint (no state_dict); to start from a network "
            "file use --network instead"
        )
    try:  # before anything expands them: a shared-reference bomb is small on disk, huge once walked
        for key, value in ckpt.items():
            if key not in ("state_dict", "optimizer_states"):
                check_metadata(value, f"{what} {p}: its {key!r}")
        flat_settings(ckpt.get("hyper_parameters") or {}, f"{what} {p}: its settings")
        _check_counters(ckpt)
    except UserError as err:
        raise UserError(str(err)) from None
    return ckpt


#: The run's counters in a checkpoint (0-dim integer buffers of the module) and their largest sane value.
COUNTERS = ("cur_nimg", "step_idx", "bad_phases", "total_phases", "bad_streak")
MAX_COUNT = 10**15


def _check_counters(ckpt: dict[str, Any]) -> None:
    state, what = ckpt["state_dict"], "--ckpt_path"
    for key in COUNTERS:
        value = state.get(key)
        ok = isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_floating_point
        if value is not None and not (ok and 0 <= int(value) <= MAX_COUNT):
            raise UserError(f"{what}: the checkpoint's counter {key} is {value!r}, not a count in [0, 1e15]")
    counts = ckpt.get("rootedgan_phase_counts", {})
    if not isinstance(counts, dict) or any(
        not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_COUNT for v in counts.values()
    ):
        raise UserError(f"{what}: the checkpoint's phase counts are not counts: {str(counts)[:200]}")


def check_resume_state(checkpoint: dict[str, Any], module: torch.nn.Module, optimizers: list[list]) -> None:
    """Refuse, in one line, a checkpoint whose weights or optimizer states do not fit ``module`` and its
    optimizers' parameters (``optimizers``: G's and D's parameter lists), before anything is loaded."""
    ours, theirs = module.state_dict(), checkpoint["state_dict"]
    if set(ours) != set(theirs):
        diff = sorted(map(str, set(ours) ^ set(theirs)))
        raise UserError(
            f"--ckpt_path: the checkpoint's weights do not fit this config's networks ({diff[:3]})"
        )
    for key, value in theirs.items():
        if not isinstance(value, torch.Tensor) or value.shape != ours[key].shape:
            raise UserError(f"--ckpt_path: the checkpoint's {key} does not fit this config's networks")
    states = checkpoint.get("optimizer_states")
    if states is None:
        return
    if not isinstance(states, list) or len(states) != len(optimizers):
        raise UserError("--ckpt_path: the checkpoint's optimizer states are not G's and D's")
    for opt_state, params in zip(states, optimizers, strict=True):
        per_param = opt_state.get("state") if isinstance(opt_state, dict) else None
        if not isinstance(per_param, dict) or not isinstance(opt_state.get("param_groups"), list):
            raise UserError("--ckpt_path: an optimizer state of the checkpoint is malformed")
        for index, entry in per_param.items():
            if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
                raise UserError(
                    f"--ckpt_path: the checkpoint's optimizer state has an unknown entry {index!r}"
                )
            for name, value in entry.items():  # a tensor of its parameter's shape, or a scalar (Adam's step)
                if not isinstance(value, torch.Tensor) or value.shape not in (params[index].shape, ()):
                    raise UserError(f"--ckpt_path: the checkpoint's optimizer state {name} does not fit")


def resume_changes(saved: dict[str, Any], given: dict[str, Any], what: str = "--ckpt_path") -> list[str]:
    """Compare a checkpoint's model settings (``saved``, any version) with those given now (both checked
    and normalised, see :func:`settings`); raise for a fixed setting that differs, return one line per
    setting that changes (the given value wins)."""
    old_settings = flat_settings(saved, f"{what}: the checkpoint's settings")
    new_settings = flat_settings(given, "the settings")
    changes, fixed = [], []
    for key in sorted(set(old_settings) | set(new_settings)):
        old, new = old_settings.get(key), new_settings.get(key)
        if old == new:
            continue
        old_text, new_text = _shown(key, old), _shown(key, new)
        if key in FIXED_ON_RESUME or key.partition(".")[0] in FIXED_ON_RESUME:
            fixed.append(f"model.{key} is {old_text} in the checkpoint but {new_text} now")
        else:
            changes.append(f"model.{key}: {old_text} -> {new_text}")
    if fixed:
        raise UserError(
            f"{what}: a resumed run keeps its settings, but " + "; ".join(fixed) + ". Give the checkpoint's "
            "values (its config.yaml in the run folder has them) or start a new run without --ckpt_path"
        )
    return changes


SECTIONS = {
    cls.where.removeprefix("model."): cls
    for cls in (OptimConfig, RegConfig, EmaConfig, AugmentConfig, GuardConfig, SpeedConfig)
}


def flat_settings(hparams: Any, what: str) -> dict[str, Any]:
    """Model settings (any version), checked like new ones, as ``{"optim.g_lr": 0.002, "loss": {...}, ...}``:
    a section's fields one by one, the loss and the orthogonal settings whole. A setting that cannot be
    read is a one-line :class:`UserError` naming ``what``."""
    if not isinstance(hparams, dict):
        raise UserError(f"{what} are not a mapping of settings ({type(hparams).__name__})")
    try:
        values = migrate(hparams)
        out: dict[str, Any] = {k: _plain(v) for k, v in values.items() if k not in SECTIONS and k[:1] != "_"}
        for name, section in SECTIONS.items():
            for key, value in section.from_any(values.get(name)).to_dict().items():
                out[f"{name}.{key}"] = _plain(value)
        out["loss"] = make_loss(values.get("loss")).spec()
        orthogonal = values.get("orthogonal")
        out["orthogonal"] = None if orthogonal is None else OrthogonalConfig.from_any(orthogonal).to_dict()
    except (UserError, TypeError, ValueError) as err:
        raise UserError(f"{what}: {err}") from None
    return out


def _shown(key: str, value: Any) -> str:
    """A setting as the messages show it: a loss by its short form when that says all (``rooted:2``)."""
    if key == "loss" and value is not None and make_loss(make_loss(value).label).spec() == value:
        return make_loss(value).label
    return repr(value)


def _plain(value: Any) -> Any:
    """Comparable form of a setting: tuples as lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def remove_stale_temp_files(folder: str | os.PathLike[str], min_age_s: float = 60.0) -> list[Path]:
    """Delete the temp files that a killed run's atomic writes left in ``folder`` (``.NAME.XXXX.tmp``, see
    :func:`rootedgan.fileio.atomic_open`), when older than ``min_age_s``; returns what was removed."""
    removed = []
    now = time.time()
    for path in Path(folder).glob(".*.tmp"):
        try:
            if path.is_file() and not path.is_symlink() and now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with :func:`read_checkpoint` for reading and atomic local writes."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return read_checkpoint(path)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialised in memory first: a failure leaves the old file as it was
        with atomic_open(path, "wb") as fh:
            fh.write(buffer.getbuffer())
