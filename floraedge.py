"""``floraedge``: one command, a subcommand per pipeline stage.

Each stage module exposes ``add_parser(subparsers)`` and keeps its heavy imports (torch,
onnx, litert) inside the function that runs, so ``floraedge --help`` and the torch-free
edge commands start fast on a device that has only ``.[edge]`` installed.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from edge_runtime import __version__
from edge_runtime.errors import FloraEdgeError

STAGE_MODULES = (
    "prepare.cli",
    "train.cli",
    "export.cli",
    "export.quantize_cli",
    "edge_runtime.cli",
    "edge_runtime.inspection",
    "edge_runtime.serve.cli",
    "benchmarks.cli",
    "benchmarks.pipelines.demo",
    "benchmarks.pipelines.release",
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 1, like every other FloraEdge error."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that every cleanup path that handles Ctrl-C runs."""


def _terminate(signum, frame):
    raise Terminated


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="floraedge",
        description="An image classifier for your own classes (or the Oxford-102 flowers), from labelled photos "
        "to a live camera on a Raspberry Pi or a Jetson.",
    )
    parser.add_argument("--version", action="version", version=f"floraedge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in STAGE_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args) or 0
    except (FloraEdgeError, OSError) as exc:  # OSError: an unwritable --out, a full disk, a missing file
        print(f"floraedge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"floraedge {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"floraedge {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if signal.getsignal(signal.SIGTERM) is _terminate:
            signal.signal(signal.SIGTERM, previous)


def stage_main(command: str) -> None:
    """Entry point of ``python -m <stage>``: the same as ``floraedge <command> ...``."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
