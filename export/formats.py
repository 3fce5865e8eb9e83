"""THE format table: one named row per format x precision.

Export, verification, the benchmarks and the tests all iterate ``FORMATS``; nothing else
lists file names, runtimes, converters, tolerances or quantization choices. A row names its
converters (functions of ``export.converters``) by name, so this module stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.backends import SATURATION_FREE_WEIGHT_ABS_MAX
from edge_runtime.errors import FloraEdgeError


@dataclass(frozen=True, kw_only=True)
class Format:
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "fp16" | "dynamic-int8" | "int8"
    filename: str
    runtime: str  # edge_runtime.backends name used to verify and bench it (BACKENDS[runtime].package installs it)
    base: str  # export.converters function that writes the format's fp32 file (made once per format)
    converter: str  # export.converters function that derives this row's file from that base file
    needs_calibration: bool = False
    # fp32 rows: max |probability - PyTorch probability| (export/verify.py); the others are gated on accuracy drop
    prob_atol: float | None = None
    also_runs_on: tuple[str, ...] = ()  # further backends the benchmarks measure this file with
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"


PROB_ATOL = 5e-4  # half the former 1e-3 logit tolerance: a softmax output moves at most half as much as a logit

ONNX = dict(format="onnx", runtime="onnxruntime", base="export_onnx_base")
TFLITE = dict(format="tflite", runtime="litert", base="export_tflite_base")

FORMATS: tuple[Format, ...] = (
    Format(
        **ONNX,
        precision="fp32",
        filename="model_fp32.onnx",
        converter="copy_base",
        prob_atol=PROB_ATOL,
        also_runs_on=("opencv",),
    ),
    Format(
        **ONNX,
        precision="fp16",
        filename="model_fp16.onnx",
        converter="onnx_fp16",
        note="fp16 weights, float32 inputs/outputs; saves size, not CPU time",
    ),
    Format(
        **ONNX,
        precision="int8",
        filename="model_int8.onnx",
        converter="onnx_int8",
        needs_calibration=True,
        note="ONNX Runtime static QDQ, per-channel weights",
    ),
    Format(**TFLITE, precision="fp32", filename="model_fp32.tflite", converter="copy_base", prob_atol=PROB_ATOL),
    Format(
        **TFLITE,
        precision="fp16",
        filename="model_fp16.tflite",
        converter="tflite_fp16",
        note="fp16 weights (ai-edge-quantizer float casting), float compute",
    ),
    Format(
        **TFLITE,
        precision="dynamic-int8",
        filename="model_dynamic-int8.tflite",
        converter="tflite_dynamic_int8",
        note="int8 weights, float activations (ai-edge-quantizer dynamic_wi8_afp32)",
    ),
    Format(
        **TFLITE,
        precision="int8",
        filename="model_int8.tflite",
        converter="tflite_int8",
        needs_calibration=True,
        note="int8 weights and activations inside; float32 input, logits and probabilities "
        "(ai-edge-quantizer static_wi8_ai8 with float edges)",
    ),
)
FORMAT_NAMES = tuple(sorted({f.format for f in FORMATS}))
PRECISIONS = tuple(dict.fromkeys(f.precision for f in FORMATS))
# ONNX dynamic-int8 is left out on purpose: ORT's dynamic quantization turns Conv into ConvInteger,
# which is slower than fp32 on CPU for these CNNs; static QDQ is the int8 path that pays off.

# Choices of the calibrated rows: calibration method -> onnxruntime's CalibrationMethod member,
# and ONNX Runtime int8 type preset -> the quantized types
CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
ORT_PRESETS = {
    # x86: uint8 activations x int8 weights is the fast kernel path. Without VNNI (AVX2, AVX512F: many AMD
    # and older Intel CPUs) the GEMM kernel behind Conv, Gemm and MatMul sums pairs of u8*s8 products in int16
    # (VPMADDUBSW) and saturates; 7-bit weights (reduce_range) keep every pair in range (255*64*2 < 2**15),
    # so the file computes what it means on every x86 CPU and on ARM (8-bit weights lost 6 points of accuracy
    # on an AVX2 CPU: docs/results.md). weights_7bit: which weights get the reduced range: "paired" = only
    # those of kernels that pair products (the depthwise kernel widens to 16 bits and cannot saturate, see
    # export.converters.depthwise_weights), "all", or "none". exact_layers: how many of the pair-summing
    # layers that 7-bit weights hurt most keep 8 bits in a form no kernel saturates on: uint8 weights, or
    # float for a layer reading the float input (export.converters.exact_layer_overrides).
    "x86": {
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "weights_7bit": "paired",
        "exact_layers": 3,
        "native_on": None,
    },
    # the x86 preset before issue 37: 7-bit weights in every layer, the depthwise ones included
    "x86-all-7bit": {
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "weights_7bit": "all",
        "exact_layers": 0,
        "native_on": None,
    },
    # ARM64: int8 x int8 maps onto the SDOT/I8MM kernels. x86 CPUs without VNNI saturate on it, so an x86
    # host verifies this file by exact QDQ emulation. native_on: the machines whose integer kernels are the
    # file's target (None: every machine).
    "arm": {
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "weights_7bit": "none",
        "exact_layers": 0,
        "native_on": ("aarch64", "arm64"),
    },
}


def onnx_int8_info(preset: str) -> dict:
    """What an int8 ONNX file records of its types (the runtime warns where its weights can saturate).
    ``weight_abs_max``: the largest |int8 weight| that a pair-summing kernel multiplies (the depthwise
    weights of the x86 preset use all 8 bits: their kernel cannot saturate)."""
    types = ORT_PRESETS[preset]
    weight_abs_max = 127 if types["weights_7bit"] == "none" else SATURATION_FREE_WEIGHT_ABS_MAX  # onnxruntime's ranges
    return {
        "preset": preset,
        "activations": types["activation_type"],
        "weight_abs_max": weight_abs_max,
        "weights_7bit": types["weights_7bit"],
        "exact_layers": types["exact_layers"],
    }


def needs_qdq_emulation(row: Format, preset: str, machine: str) -> bool:
    """Whether ``row``'s file, made with ``preset``, must be checked on ``machine`` (``platform.machine()``)
    by QDQ emulation: an int8 ONNX file whose integer kernels are another CPU's."""
    native_on = ORT_PRESETS[preset]["native_on"]
    return row.converter == "onnx_int8" and native_on is not None and machine.lower() not in native_on


def select(formats: list[str], precisions: list[str]) -> list[Format]:
    """The rows for the requested formats and precisions; unknown names list the valid ones."""
    bad_formats = [f for f in formats if f not in FORMAT_NAMES]
    bad_precisions = [p for p in precisions if p not in PRECISIONS]
    if bad_formats or bad_precisions:
        raise FloraEdgeError(
            f"unknown format(s) {bad_formats or ''} precision(s) {bad_precisions or ''}; "
            f"formats: {', '.join(FORMAT_NAMES)}; precisions: {', '.join(PRECISIONS)}"
        )
    rows = [f for f in FORMATS if f.format in formats and f.precision in precisions]
    if not rows:
        raise FloraEdgeError(
            f"no format in the table matches {formats} x {precisions}; rows: {[f.name for f in FORMATS]}"
        )
    return rows
