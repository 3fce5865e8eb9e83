"""``quantize_file(config)``: a float ONNX or TFLite file the user already has, made int8 by export's own path.

The int8 row of the format table for the file's format names the converter (``onnx_int8``: ONNX Runtime
static QDQ with export's presets; ``tflite_int8``: ai-edge-quantizer with float edges), which runs in a child
process (export/isolation.py) exactly as in ``floraedge export``, on calibration images read with the
model's own preprocessing spec. The int8 file is gated by ``export.verify.verify`` against the float file
(in place of PyTorch) on the held-out images, and carries the float file's labels and spec (``exporter.embed``).
Everything is written into a staging folder published only when the file passed: a refusal leaves nothing.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.backends import load
from edge_runtime.errors import FloraEdgeError
from edge_runtime.foreign import ModelOverrides
from edge_runtime.metadata import PROBABILITIES, ModelInfo, file_sha256
from edge_runtime.outdir import staged_output
from export import converters
from export.calibration import calibration_set, verification_set
from export.card import tool_versions
from export.converters import ExportContext
from export.exporter import embed
from export.formats import FORMATS, Format, needs_qdq_emulation, onnx_int8_info
from export.isolation import run_converter
from export.quantize_cli import QuantizeConfig
from export.verify import Reference, run_file, verify
from prepare.manifest import read_manifest

QUANTIZE = "quantize"  # the marker kind of a quantize folder: only such a folder is replaced by --overwrite
REPORT = "quantize.json"
# ONNX ops that only a quantized graph holds (QDQ, QOperator and dynamic quantization)
QUANTIZED_ONNX_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)
# what the new file keeps of the float file's own info (provenance); the rest describes the new file
CARRIED_INFO = ("arch", "dataset", "epoch", "source_checkpoint")


class QuantizeError(FloraEdgeError):
    """A file that cannot or may not be quantized, or whose int8 version failed the gate."""


def table_row(suffix: str, precision: str) -> Format:
    return next(f for f in FORMATS if "." + f.format == suffix and f.precision == precision)


def model_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".tflite"):
        raise QuantizeError(
            f"{path}: quantize takes a float32 .onnx or .tflite file, not {path.suffix or 'no suffix'!r}"
        )
    return suffix


def onnx_not_float(path: Path) -> str | None:
    """Why an ONNX file is no float32 model to quantize, or None."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(path), load_external_data=False).graph
    quantized_ops = sorted({n.op_type for n in graph.node} & QUANTIZED_ONNX_OPS)
    if quantized_ops:
        return f"is already quantized (it holds {', '.join(quantized_ops)} nodes)"
    weight_types = {t.data_type for t in graph.initializer}
    if weight_types & {TensorProto.INT8, TensorProto.UINT8}:
        return "is already quantized (it has int8 weights)"
    if TensorProto.FLOAT16 in weight_types:
        return "has float16 weights; quantize its float32 original"
    return None


def tflite_not_float(path: Path) -> str | None:
    """Why a TFLite file is no float32 model that ai-edge-quantizer can calibrate, or None."""
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAs(path.read_bytes(), 0)
    types = {
        model.Subgraphs(s).Tensors(i).Type()
        for s in range(model.SubgraphsLength())
        for i in range(model.Subgraphs(s).TensorsLength())
    }
    kinds = tfl.TensorType
    if types & {kinds.INT8, kinds.UINT8, kinds.INT16}:
        return "is already quantized (it has int8/uint8/int16 tensors)"
    if kinds.FLOAT16 in types:
        return "has float16 weights; quantize its float32 original"
    if model.SignatureDefsLength() == 0:
        return (
            "has no signature, through which ai-edge-quantizer feeds its calibration images; convert it again "
            "with one (litert-torch and the TF converter write one by default)"
        )
    return None


def check_float(path: Path, suffix: str) -> None:
    why = onnx_not_float(path) if suffix == ".onnx" else tflite_not_float(path)
    if why:
        raise QuantizeError(f"{path} {why}; nothing to do")


def data_classes(manifest: list[dict]) -> dict[int, str]:
    return {r["class_index"]: r["class_name"] for r in manifest}


def class_map(path: Path, labels: tuple[str, ...], classes: dict[int, str], data: Path) -> tuple[dict[int, int], str]:
    """The model output of each of the data's class indices, and a note where they match otherwise than
    index for index under the same name: by name (another order, or a subset of the model's classes) when
    every class name is a label, else index for index when the counts are equal (the labels are the
    model's own names for the same classes). Anything else is refused: the gate would score nonsense."""
    by_label = {label: i for i, label in enumerate(labels)}
    if all(labels[i : i + 1] == (name,) for i, name in classes.items()):
        return {i: i for i in classes}, ""
    if len(by_label) == len(labels) and all(name in by_label for name in classes.values()):
        note = f"the data's {len(classes)} classes are mapped onto the model's {len(labels)} labels by name"
        return {i: by_label[name] for i, name in classes.items()}, note
    if len(labels) == max(classes) + 1:
        note = (
            f"the model's labels ({', '.join(labels[:3])}, ...) are not the data's class names "
            f"({', '.join(classes[i] for i in sorted(classes)[:3])}, ...): data class i is taken as model output i"
        )
        return {i: i for i in classes}, note
    raise QuantizeError(
        f"{path} has {len(labels)} labels but {data} has {max(classes) + 1} classes, and its class names are not all "
        "among the labels; calibrate and gate on a prepared dataset of the model's own classes"
    )


def float_reference(
    path: Path, row: Format, batch: np.ndarray, targets: np.ndarray, output: str, overrides: ModelOverrides
) -> Reference:
    """What the float file says on the gate's images, as the Reference the int8 file is gated against
    (a probabilities file's log-probabilities stand for its logits: their softmax is those probabilities)."""
    outputs = run_file(path, row, batch, overrides=overrides)
    logits = np.log(np.maximum(outputs, np.finfo(np.float32).tiny)) if output == PROBABILITIES else outputs
    return Reference(batch, targets, logits.astype(np.float32))


def new_info(suffix: str, given: ModelInfo, path: Path, config: QuantizeConfig, calib_info: dict) -> dict:
    return {k: given.info[k] for k in CARRIED_INFO if k in given.info} | {
        "format": suffix[1:],
        "precision": "int8",
        "output": given.output,
        "normalization": "in the runtime: (pixel/255 - mean) / std per the spec, before the model",
        "quantized_by": "floraedge quantize",
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "calibration": {k: v for k, v in calib_info.items() if k != "image_ids"},
        "onnx_int8": onnx_int8_info(config.ort_preset) if suffix == ".onnx" else None,
    }


def quantize_file(config: QuantizeConfig) -> dict:
    """The int8 version of ``config.model`` in ``config.out`` (with quantize.json), or a one-line refusal."""
    path, data = Path(config.model), Path(config.data)
    suffix = model_format(path)
    row, float_row = table_row(suffix, "int8"), table_row(suffix, "fp32")
    manifest = read_manifest(data)  # refuses a folder that is not a prepared dataset
    overrides = ModelOverrides.of(config)
    # refuses a file its runtime cannot run (an op it does not know), or that nothing describes
    given = load(path, row.runtime, overrides=overrides).info
    check_float(path, suffix)
    mapping, note = class_map(path, given.labels, data_classes(manifest), data)
    for line in [*given.notes, note]:
        if line:
            print(f"note: {line}", file=sys.stderr, flush=True)
    with staged_output(config.out, QUANTIZE, overwrite=config.overwrite, inputs=[path, data]) as out:
        return quantize_into(out, config, path, (row, float_row), given, overrides, mapping, note)


def quantize_into(
    out: Path, config, path: Path, rows: tuple[Format, Format], given: ModelInfo, overrides, mapping: dict, note: str
) -> dict:
    start = time.perf_counter()
    row, float_row = rows
    data, spec = Path(config.data), given.spec
    nchw = spec.replace(layout="NCHW")  # the batches are NCHW; run_file and the TFLite converter lay them out
    batch, targets, verify_info = verification_set(
        data, nchw, split=config.verify_split, limit=config.verify_n, scratch=out
    )
    targets = np.array([mapping[int(t)] for t in targets])
    ref = float_reference(path, float_row, batch, targets, given.output, overrides)
    calib, calib_info = calibration_set(data, nchw, n=config.calib_n, minimum=config.calib_min, seed=config.calib_seed)
    nhwc = spec.layout == "NHWC"
    if row.format == "onnx" and nhwc:  # ONNX Runtime's calibration feeds the batch as it is
        calib = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
    ctx = ExportContext(
        model=None,  # no PyTorch model: the float file is the converter's base
        sample=None,
        calibration=calib,
        calib_method=config.calib_method,
        per_channel=config.per_channel,
        ort_preset=config.ort_preset,
        nhwc=nhwc,
        output=given.output,
    )
    info = new_info("." + row.format, given, path, config, calib_info)
    tmp = out / f".tmp-{row.filename}"
    try:
        print(f"== {row.name}: {path.name} -> {row.filename}", file=sys.stderr, flush=True)
        base = path.resolve()
        run_converter(getattr(converters, row.converter), ctx, tmp, base, size=base.stat().st_size)
        tmp = embed(tmp, row, list(given.labels), spec, info)
        emulate = needs_qdq_emulation(row, config.ort_preset, platform.machine())
        result = verify(tmp, row, ref, max_drop=config.max_drop, qdq_emulation=emulate, output=given.output)
        if not (result["passed"] or config.allow_drop):
            raise QuantizeError(
                f"the int8 version of {path.name} failed the gate ({result['gate']}) against the float file on "
                f"{result['n']} {config.verify_split!r} images; nothing written (--max-drop sets the limit, "
                "--allow-drop keeps such a file with a warning)"
            )
        tmp.rename(out / row.filename)
    finally:
        tmp.unlink(missing_ok=True)
    result = {
        "file": row.filename,
        "source": str(path.resolve()),
        "bytes": (out / row.filename).stat().st_size,
        "source_bytes": path.stat().st_size,
        "float_accuracy": result.pop("torch_accuracy"),  # the gate's reference here is the float file
        "kept": True,
        "warning": "" if result["passed"] else f"FAILED THE GATE: {result['gate']}",
        "labels_mapping": note,
        "quantize_s": round(time.perf_counter() - start, 2),
        "spec": spec.to_dict(),
        "info": info,
        "verification": verify_info,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "versions": tool_versions(),
        **result,
    }
    (out / REPORT).write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    return result
