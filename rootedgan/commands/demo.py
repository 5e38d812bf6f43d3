"""``rootedgan demo``: finetune the shipped digits StyleGAN2 (digits 0-4) to digits 5-9, offline, on a CPU.

Runs ``rootedgan finetune --config configs/demo.yaml`` with the packaged assets (pretrained network,
target digits, digits classifier), then composes ``before_after.png`` (G_ema on the same seeds before
and after) next to the run's ``report.png`` and prints the quality numbers, each with its feature
space. ``--baseline`` runs the logistic loss and a rooted one (``--loss``, or the config's k when ``--loss``
is logistic) with the same seed and budget through ``rootedgan compare`` and writes its curves and table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rootedgan.errors import UserError
from rootedgan.runs import latest_run

HELP = "finetune the shipped digits StyleGAN2 from digits 0-4 to 5-9 (offline, minutes on a CPU)"

# shipped inside the package (configs/ in a checkout links here), so an installed wheel has it too
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loss",
        default="logistic",
        help="model.loss of the demo run (default: logistic; rooted uses the config's k = 20)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="compare with the logistic baseline, same seed/budget (the rooted loss with the config's k "
        "when --loss is logistic)",
    )
    parser.add_argument("--kimg", type=float, default=None, help="training length (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="model.seed (latents, noise, data order)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo config (default: configs/demo.yaml)")
    parser.add_argument(
        "extra", nargs=argparse.REMAINDER, help="after `--`: more `rootedgan finetune` options"
    )


def _finetune_args(args: argparse.Namespace) -> list[str]:
    from rootedgan.digits import PRETRAINED, TARGET_ZIP

    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"demo config {config} not found: pass --config PATH (the default is {DEMO_CONFIG})")
    for asset in (PRETRAINED, TARGET_ZIP):
        if not asset.is_file():
            raise UserError(f"demo asset {asset} is missing; reinstall rootedgan or check out the repository")
    argv = ["--config", str(config), "--model.network", str(PRETRAINED), "--data.path", str(TARGET_ZIP)]
    argv += ["--model.seed", str(args.seed)]
    if args.kimg is not None:
        argv += ["--model.total_kimg", str(args.kimg)]
    extra = [a for a in args.extra if a != "--"]
    return argv + extra


def before_after(run: Path, out: Path) -> Path | None:
    """Put ``fakes_init.png`` and the last ``fakesKKKKKK.png`` of ``run`` side by side in ``out``."""
    from PIL import Image

    from rootedgan.imaging import save_image_atomic

    after = sorted(run.glob("fakes[0-9]*.png"))
    before = run / "fakes_init.png"
    if not after or not before.is_file():
        return None
    a = np.asarray(Image.open(before).convert("RGB"))
    b = np.asarray(Image.open(after[-1]).convert("RGB"))
    gap = np.full([a.shape[0], 8, 3], 255, dtype=np.uint8)
    save_image_atomic(np.concatenate([a, gap, b], axis=1), out)
    return out


def run(args: argparse.Namespace) -> int:
    from rootedgan.commands.finetune import run_finetune_cli

    out = Path(args.out)
    argv = _finetune_args(args)
    if args.baseline:
        from rootedgan.cli import main as cli_main

        other = "rooted" if args.loss == "logistic" else args.loss
        losses = ["logistic", other]  # baseline first
        compare = ["compare", "--config", argv[1], "--losses", ",".join(losses), "--seeds", str(args.seed)]
        compare += ["--out", str(out / "compare")]  # metric: the first metrics/* key, the digits FID
        if args.kimg is not None:
            compare += ["--kimg", str(args.kimg)]
        return cli_main(compare + ["--"] + argv[2:])
    status = run_finetune_cli(argv + ["--model.loss", args.loss, "--trainer.default_root_dir", str(out)])
    if status != 0:
        return status
    run_path = latest_run(out)
    combined = before_after(run_path, run_path / "before_after.png")
    print(f"\ndemo outputs in {run_path}:")
    if combined is not None:
        print(f"  {combined.name}: G_ema on 32 fixed seeds before (left) and after (right) finetuning")
    for name, what in [
        ("report.png", "digits FID, share of target digits and the losses against kimg"),
        ("quality.json", "the quality numbers (feature space named)"),
        ("reals.png", "target images"),
    ]:
        if (run_path / name).is_file():
            print(f"  {name}: {what}")
    return 0
