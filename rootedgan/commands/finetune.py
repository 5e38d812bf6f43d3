"""``rootedgan finetune``: LightningCLI over :class:`FinetuneModule` and :class:`ImageDataModule`.

``rootedgan finetune --config configs/X.yaml [--network PATH] [--model.k 4] [--ckpt_path last.ckpt]``.
``--network`` is short for ``--model.network`` (the pretrained start); resuming a run is ``--ckpt_path``
(read without executing code; settings given now win over the checkpoint's, except those that define
the run, see :mod:`rootedgan.training.resume`). The resolved config is saved as ``config.yaml`` in the run
directory, the metrics as ``metrics.csv`` (and TensorBoard events when TensorBoard is installed), the
progress as ``log.txt``. Several devices select the ``gan_ddp`` strategy.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, DefaultHelpFormatter
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from rootedgan.data import ImageDataModule
from rootedgan.errors import UserError, printable
from rootedgan.imaging import ensure_writable_dir
from rootedgan.runs import claim_version
from rootedgan.training import strategy  # noqa: F401 - registers the gan_ddp strategy name
from rootedgan.training.module import FinetuneModule
from rootedgan.training.nvidia_flags import translate as translate_nvidia_flags
from rootedgan.training.progress import TrainingProgress
from rootedgan.training.resume import (
    SafeCheckpointIO,
    check_resume_state,
    read_checkpoint,
    remove_stale_temp_files,
    resume_changes,
)
from rootedgan.training.settings import moved_hint
from rootedgan.training.snapshots import NetworkSnapshot

DESCRIPTION = (
    "Finetune a pretrained StyleGAN2 (or train one from scratch) with the rooted or the logistic loss. "
    "Options come from a YAML config (--config) and the command line; --network PATH is short for "
    "--model.network PATH; --ckpt_path resumes a run from its checkpoints/last.ckpt."
)
#: Warnings Lightning prints in every run that say nothing about this run.
HARMLESS_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode",  # G_ema stays in eval mode on purpose
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"LightningCLI's args parameter is intended",  # sys.argv stays as is for the DDP launcher
    r"The '\w+_dataloader' does not have many workers",  # data.num_workers is the user's choice
    r"You are using a CUDA device .* that has Tensor Cores",  # model.tf32 is the switch for that
    r"Your `IterableDataset` has `__len__` defined",
)


def _wants_several_devices(devices: object, num_nodes: object) -> bool:
    if isinstance(num_nodes, int) and num_nodes > 1:
        return True
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if isinstance(devices, str):
        if devices.strip() in ("auto", "-1"):
            return torch.cuda.device_count() > 1
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()]) > 1
        devices = int(devices) if devices.strip().isdigit() else 1
    return isinstance(devices, int) and (devices > 1 or (devices == -1 and torch.cuda.device_count() > 1))


def default_loggers(save_dir: str | None) -> list[Any]:
    """CSV (always: ``compare`` and the plots read ``metrics.csv``) and TensorBoard (when installed), in
    one run directory. The CSV file is flushed at every logged step, so a crash loses at most one interval."""
    root = Path(save_dir or ".")
    common = {"save_dir": str(root), "name": "lightning_logs", "version": claim_version(root)}
    loggers: list[Any] = [CSVLogger(**common, flush_logs_every_n_steps=1)]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        loggers.append(TensorBoardLogger(**common))
    return loggers


class PlainHelpFormatter(DefaultHelpFormatter):
    """The help without the docstrings' reST markup (``x``, :class:`~a.b`), which a terminal shows raw."""

    def format_help(self) -> str:
        text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", super().format_help())
        return text.replace("``", "").replace(" (module docstring)", "")


class RootedganCLI(LightningCLI):
    """LightningCLI without sub-commands, with the snapshot and progress options, our loggers, a safe
    ``--ckpt_path`` and one-line errors."""

    def add_core_arguments_to_parser(self, parser) -> None:
        # Our options first (the help lists them in this order), Lightning's Trainer last.
        parser.add_lightning_class_args(self._model_class, "model")
        parser.add_lightning_class_args(self._datamodule_class, "data")
        parser.add_lightning_class_args(NetworkSnapshot, "snapshot")
        parser.add_lightning_class_args(TrainingProgress, "progress")
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="resume this run: its checkpoints/last.ckpt"
        )
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise UserError(_one_line_parse_error(str(err), parser)) from None

    def before_instantiate_classes(self) -> None:
        config = self.config
        trainer = config.get("trainer")
        if trainer is None:
            return
        root = trainer.get("default_root_dir")
        if root:
            ensure_writable_dir(root)  # fail before loading networks, not after hours of training
        if trainer.get("strategy", "auto") == "auto" and _wants_several_devices(
            trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
        ):
            trainer["strategy"] = "gan_ddp"
        if config.get("ckpt_path"):
            self._check_resume(config)

    def _check_resume(self, config: Any) -> None:
        ckpt = read_checkpoint(config["ckpt_path"])
        saved = dict(ckpt.get("hyper_parameters") or {})
        given = config["model"].as_dict() if hasattr(config["model"], "as_dict") else dict(config["model"])
        if os.environ.get("LOCAL_RANK", "0") != "0":
            resume_changes(saved, given)
            return
        nimg = _checkpoint_nimg(ckpt)
        print(f"resuming {config['ckpt_path']} at kimg {nimg / 1000:.1f}" if nimg is not None else "resuming")
        for line in resume_changes(saved, given):
            print(f"  changed on resume: {line}")
        folder = Path(config["ckpt_path"]).expanduser().parent  # left there by the killed run's writes
        for stale in [*remove_stale_temp_files(folder), *remove_stale_temp_files(folder.parent)]:
            print(f"  removed {stale} (an unfinished write of the interrupted run)")
        total = float(given.get("total_kimg", 0))
        if nimg is not None and nimg >= total * 1000:  # nothing to train: no new run folder either
            self._finished = ckpt
            more = 2 * max(total, nimg / 1000)
            print(
                f"the run is finished (kimg {nimg / 1000:g} of model.total_kimg {total:g}): nothing to "
                f"train; to extend it, raise model.total_kimg (e.g. --model.total_kimg {more:g})"
            )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        if getattr(self, "_finished", None) is not None:
            config["logger"] = False
        elif config.get("logger") in (None, True):
            config["logger"] = default_loggers(config.get("default_root_dir"))
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        config["plugins"] = plugins
        # snapshots first (an evaluation at the same kimg then names its snapshot), progress last (its last
        # tick line shows the final evaluation)
        given = config.get("callbacks") or []
        given = list(given) if isinstance(given, (list, tuple)) else [given]
        ours = {type(cb): cb for cb in callbacks}
        config["callbacks"] = [ours.pop(NetworkSnapshot), *given, *ours.values()]
        return super()._instantiate_trainer(config, [])

    def fit(self) -> None:
        finished = getattr(self, "_finished", None)
        if finished is None:
            self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=self.config.get("ckpt_path"))
            return
        # a finished run: only the snapshot a kill may have cost it (the final one) is written, if missing
        module = self.model
        check_resume_state(finished, module, [module.g_params(), module.d_params()])
        module.load_state_dict(finished["state_dict"])
        snapshot = next(cb for cb in self.trainer.callbacks if isinstance(cb, NetworkSnapshot))
        snapshot.recover(module, self.config["ckpt_path"])


def _checkpoint_nimg(ckpt: dict[str, Any]) -> int | None:
    value = (ckpt.get("state_dict") or {}).get("cur_nimg")
    return int(value) if value is not None else None


def _option_names(parser: Any) -> list[str]:
    names = []
    for action in getattr(parser, "_actions", []):
        names += [s for s in action.option_strings if s.startswith("--")]
    return names


def _one_line_parse_error(message: str, parser: Any) -> str:
    """jsonargparse's error as one line; a setting of an earlier version names its new key, an unknown
    option the nearest valid ones."""
    first = " ".join(line.strip() for line in message.strip().splitlines()[:3]) or "invalid arguments"
    old = re.search(r"Group 'model' does not accept option '(\w+)'|--model\.(\w+)(?![\w.])", first)
    hint = moved_hint(old.group(1) or old.group(2)) if old else None
    if hint is not None:
        return hint
    if 'key "model.augment"' in first:
        return "model.augment is a section now: write e.g. `augment: {kind: ada}` or --model.augment.kind ada"
    unknown = re.findall(r"(--[\w.\-]+)", first) if "nrecognized" in first else []
    if unknown:
        names = _option_names(parser)
        hints = []
        for opt in unknown:
            close = difflib.get_close_matches(opt.split("=")[0], names, n=2, cutoff=0.6)
            hints.append(f"{opt} (did you mean {' or '.join(close)}?)" if close else opt)
        return f"unknown option {', '.join(hints)}; `rootedgan finetune --help` lists them all"
    return first


def _normalise_argv(argv: list[str]) -> list[str]:
    """``--network`` is short for ``--model.network``; NVIDIA's train.py flags become ours (printed)."""
    argv = list(argv[1:] if argv[:1] == ["fit"] else argv)  # the sub-command of earlier versions
    argv = [
        a.replace("--network", "--model.network", 1) if a.split("=")[0] == "--network" else a for a in argv
    ]
    argv, applied = translate_nvidia_flags(argv)
    if applied and os.environ.get("LOCAL_RANK", "0") == "0":
        print("NVIDIA train.py flags:\n" + "\n".join(f"  {line}" for line in applied))
    return argv


class _DropTips(logging.Filter):
    """Lightning's advertising lines ("Tip: ... try installing ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence Lightning's tips and the warnings listed in :data:`HARMLESS_WARNINGS`."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    try:  # Lightning's own use of jsonargparse APIs that jsonargparse deprecated: nothing for the user to do
        from jsonargparse._deprecated import JsonargparseDeprecationWarning
    except ImportError:
        pass
    else:
        warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)


def run_finetune_cli(argv: list[str]) -> int:
    """Entry point used by ``rootedgan finetune``; returns the exit status."""
    quiet_lightning()
    try:
        cli = RootedganCLI(
            FinetuneModule,
            ImageDataModule,
            args=_normalise_argv(argv),
            run=False,
            parser_kwargs={
                "prog": "rootedgan finetune",
                "description": DESCRIPTION,
                "exit_on_error": False,
                "formatter_class": PlainHelpFormatter,
            },
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "max_epochs": -1,
                "log_every_n_steps": 10,
                "use_distributed_sampler": False,
                "enable_progress_bar": False,  # TrainingProgress shows the run's progress
                "enable_checkpointing": False,  # NetworkSnapshot writes last.ckpt (and more on request)
            },
            auto_configure_optimizers=False,
            seed_everything_default=False,  # model.seed: latents, mixing, noise; data.seed: data order, flips
        )
        cli.fit()
    except MisconfigurationException as err:  # e.g. --trainer.accelerator gpu on a machine without one
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "gpu" in first.lower() and not torch.cuda.is_available():
            first += " (this machine has no usable CUDA GPU: use --trainer.accelerator cpu, or auto)"
        print(f"rootedgan finetune: error: trainer: {first}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"rootedgan finetune: error: {printable(err)}", file=sys.stderr)
        return 2
    return 0
