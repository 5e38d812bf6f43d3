"""The ``rootedgan`` console script: one sub-command per module in :mod:`rootedgan.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can fix (:class:`rootedgan.errors.UserError`, and stylegan_ops' ``ImplSettingError`` for a bad
``STYLEGAN_OPS_IMPL``) print one clear message and exit 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rootedgan import __version__
from rootedgan.errors import UserError, printable
from stylegan_ops._impl import ImplSettingError

FINETUNE_HELP = (
    "Finetune (or train) a StyleGAN2 with the rooted or the logistic loss, from a YAML config; "
    "`rootedgan finetune --help` lists its options."
)
# name -> module under rootedgan.commands. `finetune` is dispatched to LightningCLI separately.
_NAMES = "generate style-mixing project dataset convert doctor fid landscape compare demo".split()
COMMANDS = {name: name.replace("-", "_") for name in _NAMES}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rootedgan",
        description="Finetune pretrained StyleGAN2 networks with the rooted logistic objective.",
    )
    parser.add_argument("--version", action="version", version=f"rootedgan {__version__}")
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
        print(f"rootedgan {printable(command)}: error: {printable(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
