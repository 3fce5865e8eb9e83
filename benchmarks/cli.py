"""``floraedge bench``: the report users judge us by (runs with only .[edge] installed)."""

from __future__ import annotations

import argparse

from edge_runtime.cli import number
from edge_runtime.errors import FloraEdgeError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="accuracy / latency / size / memory / loop FPS of every exported file, side by side",
        description="Benchmark every file of an export folder (the export format table decides which), plus the "
        "PyTorch model when --checkpoint is given. Writes report.md (with plots), results.csv, results.json.",
        epilog="example:\n  floraedge bench --models exports/lite0 --checkpoint runs/lite0/best.pt --data data/flowers "
        "--out bench/lite0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", required=True, help="folder written by `floraedge export`")
    p.add_argument("--data", required=True, help="prepared dataset")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--split", default="val", help="(default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="add the PyTorch model as the reference row (needs torch)")
    p.add_argument(
        "--threads",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=(1, 2, 4),
        help="thread counts, capped at the cores present (default: 1,2,4)",
    )
    p.add_argument("--limit", type=number(low=1), default=None, help="at most this many evaluation images")
    p.add_argument("--runs", type=number(low=1), default=50, help="timed runs per latency (default: %(default)s)")
    p.add_argument("--warmup", type=number(low=0), default=10, help="(default: %(default)s)")
    p.add_argument(
        "--loop-frames",
        type=number(low=1),
        default=120,
        help="frames of the camera-loop FPS clip (default: %(default)s)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from benchmarks.bench import BenchConfig, bench

    fields = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    report = bench(BenchConfig(**fields))
    failed = [r["name"] for r in report["rows"] if "error" in r]
    print(f"wrote {args.out}/report.md, results.csv, results.json" + (f"; failed rows: {failed}" if failed else ""))
    if len(failed) == len(report["rows"]):
        first = next(r["error"] for r in report["rows"])
        raise FloraEdgeError(f"every row failed (the first: {first}); see {args.out}/report.md")
    return 0
