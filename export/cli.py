"""``floraedge export``: the format table's rows, exported and verified (needs the .[export] extra).

Options are generated from ``ExportConfig``; their choices come from the format table."""

from __future__ import annotations

import argparse
import json

from edge_runtime import console
from edge_runtime.cli import number
from edge_runtime.options import Option, add_command, config_from_args
from export.config import ExportConfig
from export.formats import CALIB_METHODS, FORMAT_NAMES, ORT_PRESETS, PRECISIONS

EXPORT_OPTIONS = {
    "checkpoint": Option("best.pt from `floraedge train`"),
    "data": Option("prepared dataset: calibration (train) and verification (val) images"),
    "out": Option("output folder"),
    "formats": Option(f"comma-separated of {', '.join(FORMAT_NAMES)} (default: all)"),
    "precisions": Option(f"comma-separated of {', '.join(PRECISIONS)} (default: all)"),
    "calib_n": Option("class-balanced calibration images", parse=number(low=1)),
    "calib_min": Option("refuse to calibrate on fewer", parse=number(low=1)),
    "calib_seed": Option(),
    "calib_method": Option("ONNX Runtime calibration", choices=tuple(CALIB_METHODS)),
    "per_channel": Option("ONNX int8 weights per tensor (default: per channel)", flag="--per-tensor"),
    "ort_preset": Option(
        "ONNX int8 types: x86 = uint8 x int8 with 7-bit weights wherever x86's kernel sums product pairs (8-bit "
        "depthwise weights; the layers 7 bits hurt most as uint8 x uint8 or float), right on every CPU; x86-all-7bit = 7-bit "
        "weights everywhere (the former default); arm = int8 x int8 for ARM64's SDOT kernels (an x86 host "
        "verifies it by QDQ emulation)",
        choices=tuple(ORT_PRESETS),
    ),
    "verify_split": Option(),
    "verify_n": Option("verify on at most this many images (default: all)", parse=number(low=1)),
    "max_drop": Option("max accuracy drop in points for fp16/int8", parse=number(float, low=0)),
    "allow_drop": Option("keep a file that fails the gate, with a warning in its card"),
    "nhwc": Option("TFLite input NCHW (default: NHWC, what mobile apps use)", flag="--nchw"),
    "overwrite": Option("replace an existing export folder"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "export",
        ExportConfig,
        EXPORT_OPTIONS,
        run,
        help="ONNX / TFLite at fp32, fp16, dynamic-int8, int8; labels + spec inside; each file verified",
        description="Export a checkpoint to every requested format x precision, embed labels and the preprocessing "
        "spec, and verify each file with its own runtime against the PyTorch model on validation images. "
        "A file that fails the gate is not written (or, with --allow-drop, is kept with a warning).",
        epilog="example:\n  floraedge export --checkpoint runs/lite0/best.pt --data data/flowers --out exports/lite0",
        own=console.VERBOSE_OWN,
    )
    return console.add_verbose_flag(parser)


@console.quiet_unless_verbose
def run(args: argparse.Namespace) -> int:
    from export.exporter import export_all

    config = config_from_args(args)
    results = export_all(config)
    print(
        json.dumps(
            [{k: r.get(k) for k in ("file", "passed", "kept", "bytes", "accuracy", "gate", "error")} for r in results],
            indent=1,
        )
    )
    print(f"wrote {config.out}/ (MODEL_CARD.md, model_card.json, labels.txt)")
    return 0 if all(r.get("kept") for r in results) else 1
