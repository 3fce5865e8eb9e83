"""``floraedge bench``: the report users judge us by (runs with only .[edge] installed)."""

from __future__ import annotations

import argparse
import sys

from benchmarks.bench import BenchConfig
from edge_runtime import console
from edge_runtime.cli import number
from edge_runtime.errors import FloraEdgeError
from edge_runtime.options import Option, add_command, config_from_args

BENCH_OPTIONS = {
    "models": Option(
        "model files (.onnx, .tflite: a `floraedge export` or `quantize` file, or any other tool's with a sidecar) "
        "and folders written by `floraedge export` (every file of the format table in them), mixed",
        many=True,
    ),
    "data": Option("prepared dataset"),
    "out": Option("report folder"),
    "split": Option(),
    "reference": Option(
        "the full model that agreement and top-1 drops are measured against, measured as the first row: a model "
        "file (e.g. the float file you quantized) or a floraedge checkpoint (the PyTorch model; needs torch). "
        "Default: the first row"
    ),
    "checkpoint": Option("deprecated: the former name of --reference for a checkpoint"),
    "threads": Option(
        "the thread counts to time each file at, capped at the cores present",
        flag="--thread-counts",
        old_flag="--threads",
    ),
    "limit": Option("at most this many evaluation images", parse=number(low=1)),
    "rounds": Option(
        "latency rounds: each visits every row once, the order rotated, so drift slows every row alike",
        parse=number(low=1, high=1000),
    ),
    "runs": Option("timed runs per row, thread count and round", parse=number(low=1, high=10**7)),
    "warmup": Option("untimed runs before a row's first round", parse=number(low=0, high=10**7)),
    "loop_frames": Option("frames of the camera-loop FPS clip", parse=number(low=1)),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "bench",
        BenchConfig,
        BENCH_OPTIONS,
        run,
        help="accuracy / latency / size / memory / loop FPS of every exported file, side by side",
        description="Benchmark model files and export folders side by side (in a folder, the export format table "
        "decides which files), against the --reference model (a file or a checkpoint) when one is given: each row's "
        "agreement with it and top-1 drop from it. Accuracy: one pass per file, the images streamed. Latency: "
        "--rounds rounds that time every row in turn (order rotated each round), so each row's ratio to the "
        "reference row (the first) is measured under the same conditions; the report gives the spread across "
        "rounds and flags a run whose load, clock, temperature or throttling changed (docs/benchmarking.md). "
        "Writes report.md (with plots), results.csv, results.json.",
        epilog="examples:\n  floraedge bench --models exports/lite0 --reference runs/lite0/best.pt --data data/flowers "
        "--out bench/lite0\n"
        "  floraedge bench --models mine_int8/model_int8.onnx exports/lite0 --reference mine.onnx --data data/flowers "
        "--out bench/mine",
        own=console.VERBOSE_OWN,
    )
    return console.add_verbose_flag(parser)


@console.quiet_unless_verbose
def run(args: argparse.Namespace) -> int:
    from benchmarks.bench import bench

    config = config_from_args(args)
    if args.checkpoint:
        print(
            "note: --checkpoint is deprecated; use --reference (it takes a checkpoint or a model file)", file=sys.stderr
        )
    report = bench(config)
    failed = [r["name"] for r in report["rows"] if "error" in r]
    print(f"wrote {config.out}/report.md, results.csv, results.json" + (f"; failed rows: {failed}" if failed else ""))
    if len(failed) == len(report["rows"]):
        first = next(r["error"] for r in report["rows"])
        raise FloraEdgeError(f"every row failed (the first: {first}); see {config.out}/report.md")
    return 0
