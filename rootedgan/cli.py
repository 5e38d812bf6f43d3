"""The ``rootedgan`` console script: one sub-command per module in :mod:`rootedgan.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can fix (:class:`rootedgan.errors.UserError`, and stylegan_ops' ``ImplSettingError`` for a bad
``STYLEGAN_OPS_IMPL``) print one clear message and exit 2;
they never show a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rootedgan.errors import UserError
from stylegan_ops._impl import ImplSettingError

FINETUNE_HELP = (
    "Finetune (or train) a StyleGAN2 with the rooted or the logistic loss, from a YAML config; "
    "`rootedgan finetune --help` lists its options."
)
# name -> module under rootedgan.commands. `finetune` is dispatched to LightningCLI separately.
COMMANDS = {
    "generate": "generate",
    "style-mixing": "style_mixing",
    "project": "project",
    "dataset": "dataset",
    "convert": "convert",
    "doctor": "doctor",
    "fid": "fid",
    "landscape": "landscape",
    "compare": "compare",
    "demo": "demo",
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rootedgan",
        description="Finetune pretrained StyleGAN2 networks with the rooted logistic objective.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # dispatched to LightningCLI by main() before this parser runs; listed here for --help
    sub.add_parser("finetune", help=FINETUNE_HELP, description=FINETUNE_HELP, add_help=False)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"rootedgan.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    try:
        if command == "finetune":
            from rootedgan.commands.finetune import run_finetune_cli

            return run_finetune_cli(argv[1:])
        args = _build_parser().parse_args(argv)
        return int(args._run(args) or 0)
    except (UserError, ImplSettingError) as err:  # a bad STYLEGAN_OPS_IMPL is a user error too
        print(f"rootedgan {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
