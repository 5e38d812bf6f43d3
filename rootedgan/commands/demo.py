"""``rootedgan demo``: finetune the shipped digits StyleGAN2 (digits 0-4) to digits 5-9, offline, on a CPU.

Runs ``rootedgan finetune --config configs/demo.yaml`` on the packaged assets, then composes
``before_after.png`` (G_ema on the same seeds before and after) and prints the outputs; ``--baseline`` runs
the logistic and the rooted loss with the same seed and budget as ``rootedgan compare`` (README "The demo").
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rootedgan.commands.compare import print_study
from rootedgan.digits.demo import DEMO_CONFIG, before_after, finetune_args
from rootedgan.runs import latest_run

HELP = "finetune the shipped digits StyleGAN2 from digits 0-4 to 5-9 (offline, minutes on a CPU)"
OUTPUTS = {
    "report.png": "digits FID, share of target digits and the losses against kimg",
    "quality.json": "the quality numbers (feature space named)",
    "reals.png": "target images",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loss",
        default="rooted",
        help="model.loss of the demo run (default: rooted, the config's k = 20; or logistic, rooted:K)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="compare --loss with the logistic baseline, same seed and budget (rooted k = 20 when --loss "
        "is logistic)",
    )
    parser.add_argument("--kimg", type=float, help="training length (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="model.seed (latents, noise, data order)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo config (default: configs/demo.yaml)")
    parser.add_argument(
        "extra", nargs=argparse.REMAINDER, help="after `--`: more `rootedgan finetune` options"
    )


def run(args: argparse.Namespace) -> int:
    # Lightning (finetune) and rootedgan.compare load slowly: imported here, not for `rootedgan --help`
    from rootedgan.commands.finetune import run_finetune_cli
    from rootedgan.compare.study import StudyOptions, run_study

    out = Path(args.out)
    argv = finetune_args(args.config, args.seed, args.kimg, [a for a in args.extra if a != "--"])
    if args.baseline:  # logistic first (the baseline); the metric: the first metrics/* key, the digits FID
        losses = ["logistic", "rooted" if args.loss == "logistic" else args.loss]
        command = shlex.join(["rootedgan", *sys.argv[1:]]) if len(sys.argv) > 1 else None
        options = dict(kimg=args.kimg, out=out / "compare", extra=argv[2:], command=command)
        return print_study(run_study(StudyOptions(argv[1], losses, str(args.seed), **options)))
    status = run_finetune_cli(argv + ["--model.loss", args.loss, "--trainer.default_root_dir", str(out)])
    if status != 0:
        return status
    run_path = latest_run(out)
    combined = before_after(run_path, run_path / "before_after.png")
    print(f"\ndemo outputs in {run_path}:")
    if combined is not None:
        print(f"  {combined.name}: G_ema on 32 fixed seeds before (left) and after (right) finetuning")
    for name, what in OUTPUTS.items():
        if (run_path / name).is_file():
            print(f"  {name}: {what}")
    return 0
