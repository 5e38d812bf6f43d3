"""``rootedgan finetune``: LightningCLI over :class:`FinetuneModule` and :class:`ImageDataModule`.

``rootedgan finetune --config configs/X.yaml [--network PATH] [--model.k 4] [--ckpt_path last.ckpt]``.
Without a sub-command ``fit`` is implied; ``validate`` is accepted too. ``--network`` is a shortcut
for ``--model.network`` (the pretrained start); resuming a run is ``--ckpt_path``. The resolved config
is saved as ``config.yaml`` in the run directory. Several devices select the ``gan_ddp`` strategy.
"""

from __future__ import annotations

import sys
import warnings

import torch
from lightning.pytorch.cli import LightningCLI

from rootedgan.callbacks import NetworkSnapshot
from rootedgan.errors import UserError
from rootedgan.imaging import ensure_writable_dir

SUBCOMMANDS = ("fit", "validate")


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


class RootedganCLI(LightningCLI):
    """LightningCLI with the snapshot callback's options under ``snapshot.*`` and GAN-aware defaults."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        parser.add_lightning_class_args(NetworkSnapshot, "snapshot")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is None:
            return
        root = trainer.get("default_root_dir")
        if root and self.subcommand == "fit":
            ensure_writable_dir(root)  # fail before loading networks, not after hours of training
        if trainer.get("strategy", "auto") == "auto" and _wants_several_devices(
            trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
        ):
            trainer["strategy"] = "gan_ddp"


def _normalise_argv(argv: list[str]) -> list[str]:
    argv = list(argv)
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "fit")
    out = []
    for arg in argv:
        if arg == "--network":
            out.append("--model.network")
        elif arg.startswith("--network="):
            out.append("--model.network=" + arg.split("=", 1)[1])
        else:
            out.append(arg)
    return out


def run_finetune_cli(argv: list[str]) -> int:
    """Entry point used by ``rootedgan finetune``; returns the exit status."""
    import rootedgan.strategy  # noqa: F401 - registers the gan_ddp strategy name
    from rootedgan.data import ImageDataModule
    from rootedgan.module import FinetuneModule

    # sys.argv must stay as it is (Lightning's DDP launcher re-runs it for the other ranks), so
    # LightningCLI's warning about `args` next to sys.argv does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # G_ema is kept in eval mode on purpose (it is never trained); Lightning counts its modules.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    try:
        RootedganCLI(
            FinetuneModule,
            ImageDataModule,
            args=_normalise_argv(argv),
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"max_epochs": -1, "log_every_n_steps": 10, "use_distributed_sampler": False},
            auto_configure_optimizers=False,
            seed_everything_default=False,  # model.seed drives all training randomness
        )
    except UserError as err:
        print(f"rootedgan finetune: error: {err}", file=sys.stderr)
        return 2
    return 0
