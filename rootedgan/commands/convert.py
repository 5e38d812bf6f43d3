"""``rootedgan convert IN OUT``: rewrite a network checkpoint as rootedgan .safetensors or rosinality .pt."""

from __future__ import annotations

import argparse

from rootedgan.checkpoints import convert_network

HELP = "Convert a network checkpoint (NVIDIA .pkl, rosinality .pt, .safetensors) to .safetensors or .pt."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", metavar="IN", help="checkpoint to read: a path, an http(s) URL or a known network name"
    )
    parser.add_argument("output", metavar="OUT", help="file to write (.safetensors or .pt)")
    parser.add_argument(
        "--format",
        choices=("native", "rosinality"),
        help="output format (default: from OUT's suffix: .safetensors -> native, .pt -> rosinality). "
        "NVIDIA .pkl output is not offered (it would embed NVIDIA's non-commercial source code).",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="fold orthogonal-finetuning rotations into plain weights before writing; required to convert an "
        "adapter file (network-snapshot-*.adapter.safetensors), which is applied to its base checkpoint",
    )
    parser.add_argument(
        "--base",
        help="base checkpoint of an adapter: a path, URL or network name (default: the file of the recorded "
        "name next to the adapter; recorded paths and URLs are never opened). Checked by sha256",
    )


def run(args: argparse.Namespace) -> int:
    result = convert_network(args.input, args.output, fmt=args.format, merge=args.merge, base=args.base)
    nets = ", ".join(result["networks"])
    print(
        f"wrote {result['path']} ({result['format']} format: {nets}) "
        f"from {args.input} ({result['source_format']})"
    )
    for note in result["notes"]:
        print(f"note: {note}")
    return 0
