"""``floraedge``: one command, a subcommand per pipeline stage.

Each stage module exposes ``add_parser(subparsers)`` and keeps its heavy imports (torch,
onnx, litert) inside the function that runs, so ``floraedge --help`` and the torch-free
edge commands start fast on a device that has only ``.[edge]`` installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edge_runtime import __version__
from edge_runtime.errors import FloraEdgeError

STAGE_MODULES = (
    "prepare.cli",
    "train.cli",
    "export.cli",
    "edge_runtime.cli",
    "edge_runtime.serve.cli",
    "benchmarks.cli",
    "benchmarks.demo",
    "export.release",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floraedge",
        description="Oxford-102 flowers from the raw release to a live camera on a Raspberry Pi or a Jetson.",
    )
    parser.add_argument("--version", action="version", version=f"floraedge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in STAGE_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except FloraEdgeError as exc:
        print(f"floraedge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"floraedge {args.command}: interrupted", file=sys.stderr)
        return 130


def stage_main(command: str) -> None:
    """Entry point of ``python -m <stage>``: the same as ``floraedge <command> ...``."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
