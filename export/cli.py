"""``floraedge export``: the format table's rows, exported and verified (needs the .[export] extra)."""

from __future__ import annotations

import argparse
import json

from export.formats import FORMAT_NAMES, PRECISIONS


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="ONNX / TFLite at fp32, fp16, dynamic-int8, int8; labels + spec inside; each file verified",
        description="Export a checkpoint to every requested format x precision, embed labels and the preprocessing "
        "spec, and verify each file with its own runtime against the PyTorch model on validation images. "
        "A file that fails the gate is not written (or, with --allow-drop, is kept with a warning).",
        epilog="example:\n  floraedge export --checkpoint runs/lite0/best.pt --data data/flowers --out exports/lite0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="best.pt from `floraedge train`")
    p.add_argument("--data", required=True, help="prepared dataset: calibration (train) and verification (val) images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--formats",
        type=csv_list,
        default=FORMAT_NAMES,
        help=f"comma-separated of {', '.join(FORMAT_NAMES)} (default: all)",
    )
    p.add_argument(
        "--precisions",
        type=csv_list,
        default=PRECISIONS,
        help=f"comma-separated of {', '.join(PRECISIONS)} (default: all)",
    )
    p.add_argument("--calib-n", type=int, default=300, help="class-balanced calibration images (default: %(default)s)")
    p.add_argument("--calib-min", type=int, default=100, help="refuse to calibrate on fewer (default: %(default)s)")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument(
        "--calib-method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="ONNX Runtime calibration (default: %(default)s)",
    )
    p.add_argument(
        "--per-tensor",
        dest="per_channel",
        action="store_false",
        help="ONNX int8 weights per tensor (default: per channel)",
    )
    p.add_argument(
        "--ort-preset", choices=("x86", "arm"), default="x86", help="ONNX int8 type preset (default: %(default)s)"
    )
    p.add_argument("--verify-split", default="val", help="(default: %(default)s)")
    p.add_argument("--verify-n", type=int, default=None, help="verify on at most this many images (default: all)")
    p.add_argument(
        "--max-drop", type=float, default=1.0, help="max accuracy drop in points for fp16/int8 (default: %(default)s)"
    )
    p.add_argument(
        "--allow-drop", action="store_true", help="keep a file that fails the gate, with a warning in its card"
    )
    p.add_argument(
        "--nchw", dest="nhwc", action="store_false", help="TFLite input NCHW (default: NHWC, what mobile apps use)"
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from export.exporter import ExportConfig, export_all

    fields = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    results = export_all(ExportConfig(**fields))
    print(
        json.dumps(
            [{k: r.get(k) for k in ("file", "passed", "kept", "bytes", "accuracy", "gate", "error")} for r in results],
            indent=1,
        )
    )
    print(f"wrote {args.out}/ (MODEL_CARD.md, model_card.json, labels.txt)")
    return 0 if all(r.get("kept") for r in results) else 1
