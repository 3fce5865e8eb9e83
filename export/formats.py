"""THE format table: one named row per format x precision.

Export, verification, the benchmarks and the tests all iterate ``FORMATS``; nothing else
lists file names, runtimes or tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.errors import FloraEdgeError


@dataclass(frozen=True, kw_only=True)
class Format:
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "fp16" | "dynamic-int8" | "int8"
    filename: str
    runtime: str  # edge_runtime.backends name used to verify and bench it
    needs_calibration: bool = False
    # fp32 rows: max |probability - PyTorch probability| (export/verify.py); the others are gated on accuracy drop
    prob_atol: float | None = None
    also_runs_on: tuple[str, ...] = ()  # further backends the benchmarks measure this file with
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"


PROB_ATOL = 5e-4  # half the former 1e-3 logit tolerance: a softmax output moves at most half as much as a logit

FORMATS: tuple[Format, ...] = (
    Format(
        format="onnx",
        precision="fp32",
        filename="model_fp32.onnx",
        runtime="onnxruntime",
        prob_atol=PROB_ATOL,
        also_runs_on=("opencv",),
    ),
    Format(
        format="onnx",
        precision="fp16",
        filename="model_fp16.onnx",
        runtime="onnxruntime",
        note="fp16 weights, float32 inputs/outputs; saves size, not CPU time",
    ),
    Format(
        format="onnx",
        precision="int8",
        filename="model_int8.onnx",
        runtime="onnxruntime",
        needs_calibration=True,
        note="ONNX Runtime static QDQ, per-channel weights",
    ),
    Format(format="tflite", precision="fp32", filename="model_fp32.tflite", runtime="litert", prob_atol=PROB_ATOL),
    Format(
        format="tflite",
        precision="fp16",
        filename="model_fp16.tflite",
        runtime="litert",
        note="fp16 weights (ai-edge-quantizer float casting), float compute",
    ),
    Format(
        format="tflite",
        precision="dynamic-int8",
        filename="model_dynamic-int8.tflite",
        runtime="litert",
        note="int8 weights, float activations (ai-edge-quantizer dynamic_wi8_afp32)",
    ),
    Format(
        format="tflite",
        precision="int8",
        filename="model_int8.tflite",
        runtime="litert",
        needs_calibration=True,
        note="int8 weights and activations inside; float32 input, logits and probabilities "
        "(ai-edge-quantizer static_wi8_ai8 with float edges)",
    ),
)
FORMAT_NAMES = tuple(sorted({f.format for f in FORMATS}))
PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")
# ONNX dynamic-int8 is left out on purpose: ORT's dynamic quantization turns Conv into ConvInteger,
# which is slower than fp32 on CPU for these CNNs; static QDQ is the int8 path that pays off.


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
