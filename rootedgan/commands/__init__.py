"""The command line: one module per ``rootedgan`` sub-command (:mod:`rootedgan.cli`), each with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``: it parses, calls the library, prints. The options that
several commands share are defined here once."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

OPTIONS: dict[str, dict[str, Any]] = {
    "--network": {"required": True, "help": "checkpoint path, URL or shortcut name (e.g. ffhq256)"},
    "--trunc": {"type": float, "default": 1.0, "help": "truncation psi (default 1)"},
    "--noise-mode": {"choices": ["const", "random", "none"], "default": "const"},
    "--class": {"dest": "class_idx", "type": int, "help": "class index (conditional)"},
    "--outdir": {"required": True, "help": "output directory (created if needed)"},
    "--device": {"default": "auto", "help": "cpu, cuda, cuda:N or auto"},
    "--which": {"choices": ["G_ema", "G"], "default": "G_ema", "help": "network in the checkpoint"},
    "--base": {
        "help": "base checkpoint of an orthogonal-finetuning adapter --network (default: the file of the "
        "same name next to the adapter; checked by sha256)"
    },
}


def add_options(parser: argparse.ArgumentParser | Any, *names: str, **changes: dict[str, Any]) -> None:
    """Add the shared options ``names`` (keys of :data:`OPTIONS`); ``changes["noise_mode"] = {...}`` updates
    the settings of one (``--noise-mode``) for this command."""
    for name in names:
        parser.add_argument(name, **{**OPTIONS[name], **changes.get(name[2:].replace("-", "_"), {})})


def options_from(args: argparse.Namespace, cls: type[T], **given: Any) -> T:
    """The dataclass ``cls`` of a library function, its fields taken from the parsed ``args`` of the same
    names (those in ``given`` from there)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given]  # type: ignore[arg-type]
    return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)}, **given)
