"""``floraedge quantize``: a float ONNX or TFLite file the user already has, made int8 (needs the .[export]
extra). Options are generated from ``QuantizeConfig``; those it shares with ``export`` are export's own
declarations (same names, defaults, help and choices), so the two commands quantize alike."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from edge_runtime import console
from edge_runtime.foreign import OVERRIDE_OPTIONS, OverrideFields
from edge_runtime.options import Option, add_command, config_from_args
from export.cli import EXPORT_OPTIONS
from export.config import ExportConfig

SHARED_WITH_EXPORT = (
    "calib_n",
    "calib_min",
    "calib_seed",
    "calib_method",
    "per_channel",
    "ort_preset",
    "verify_split",
    "verify_n",
    "max_drop",
    "allow_drop",
)


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig(OverrideFields):  # the inherited fields: how to run a float file that does not say it itself
    model: str  # a float .onnx or .tflite file
    data: str  # prepared dataset: calibration (train split) and gate (val split) images
    out: str
    calib_n: int = ExportConfig.calib_n
    calib_min: int = ExportConfig.calib_min
    calib_seed: int = ExportConfig.calib_seed
    calib_method: str = ExportConfig.calib_method
    per_channel: bool = ExportConfig.per_channel
    ort_preset: str = ExportConfig.ort_preset
    verify_split: str = ExportConfig.verify_split
    verify_n: int | None = ExportConfig.verify_n
    max_drop: float = ExportConfig.max_drop
    allow_drop: bool = ExportConfig.allow_drop
    overwrite: bool = False


QUANTIZE_OPTIONS = {
    "model": Option(
        "a float32 .onnx or .tflite classifier: a `floraedge export` file or any other tool's (its labels and "
        "preprocessing from its metadata, a sidecar, or the options below, as `classify` reads them)"
    ),
    "data": Option("prepared dataset (`floraedge prepare`): calibration (train) and gate (val) images"),
    "out": Option("output folder: the int8 file and quantize.json (the gate's figures)"),
    **{name: EXPORT_OPTIONS[name] for name in SHARED_WITH_EXPORT},
    "overwrite": Option("replace an existing quantize folder"),
    **OVERRIDE_OPTIONS,
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "quantize",
        QuantizeConfig,
        QUANTIZE_OPTIONS,
        run,
        help="a float ONNX / TFLite file you already have -> int8, calibrated on your images and gated",
        description="Quantize a float32 ONNX file (ONNX Runtime static QDQ, the presets of `floraedge export`) or "
        "TFLite file (ai-edge-quantizer, int8 inside with float32 edges, as `export` makes it) to int8. The int8 "
        "scales are calibrated on the train images of a prepared dataset, preprocessed with the model's own spec; "
        "the int8 file is then gated against the float file on the held-out (val) images exactly like `export`'s "
        "gate (top-1 drop within --max-drop; agreement reported) and carries the float file's labels and spec. "
        "Refused, with nothing written: a file that is already quantized, a model whose labels do not match the "
        "data's classes, a folder that is not a prepared dataset, a file that fails the gate. See docs/own_model.md.",
        epilog="examples:\n"
        "  floraedge quantize --model my_model.onnx --data data/flowers --out quantized/onnx\n"
        "  floraedge quantize --model my_model.tflite --data data/flowers --out quantized/tflite --max-drop 0.5\n"
        "  floraedge bench --models quantized/onnx/model_int8.onnx --reference my_model.onnx --data data/flowers "
        "--out bench/mine",
        own=console.VERBOSE_OWN,
    )
    return console.add_verbose_flag(parser)


@console.quiet_unless_verbose
def run(args: argparse.Namespace) -> int:
    from export.quantize import quantize_file

    config = config_from_args(args)
    result = quantize_file(config)
    keys = ("file", "passed", "kept", "bytes", "accuracy", "float_accuracy", "gate", "warning")
    print(json.dumps({k: result.get(k) for k in keys}, indent=1))
    print(f"wrote {config.out}/ ({result['file']}, quantize.json)")
    return 0
