"""The converters behind the format table: PyTorch -> ONNX / TFLite, and their quantized variants.

Base files (fp32, no metadata) are made once per format; every precision derives from them. The
rows of ``export.formats.FORMATS`` name which function makes each file. Every file ends in a
float32 softmax: its output is probabilities (see ``WithSoftmax``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_runtime.metadata import classifier_title
from export.config import ExportConfig
from export.formats import CALIB_METHODS, ORT_PRESETS

ONNX_OPSET = 17


class WithSoftmax(torch.nn.Module):
    """The classifier followed by a softmax, the graph every file is exported from.

    Mobile loaders (MediaPipe's ImageClassifier, the TFLite Task Library) report a file's output as
    its scores, so a score threshold only means something on probabilities. The quantized files keep
    the softmax (and the logits before it) in float32, after the int8 part of the graph.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=-1)


@dataclass(frozen=True, kw_only=True)
class ExportContext:
    model: torch.nn.Module  # a WithSoftmax
    sample: torch.Tensor  # one NCHW input
    calibration: np.ndarray | None  # NCHW float32 batch
    # the export options the converters read, defaulted as `floraedge export` defaults them
    calib_method: str = ExportConfig.calib_method
    per_channel: bool = ExportConfig.per_channel
    ort_preset: str = ExportConfig.ort_preset
    nhwc: bool = ExportConfig.nhwc  # TFLite input layout


def export_onnx_base(ctx: ExportContext, dest: Path) -> None:
    """fp32 ONNX, one file, dynamic batch. The TorchScript-based exporter (opset 17) is used for every
    backbone: the dynamo exporter's MobileNetV3 is mis-computed by OpenCV DNN (squeeze-excite broadcast),
    and opset 17 also loads in the older onnxruntime of JetPack 6."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ctx.model,
            (ctx.sample,),
            str(dest),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
        )


def onnx_fp16(base: Path, dest: Path, ctx: ExportContext) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(base)), keep_io_types=True)
    onnx.save(model, str(dest))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory batch."""

    def __init__(self, batch: np.ndarray):
        self.items = iter([{"input": batch[i : i + 1]} for i in range(len(batch))])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):
        raise NotImplementedError


def softmax_nodes(model_path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type == "Softmax"]


def onnx_int8(base: Path, dest: Path, ctx: ExportContext) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = dest.with_name(dest.name + ".pre.onnx")
    try:
        quant_pre_process(str(base), str(prepped), skip_symbolic_shape=True)
        preset = ORT_PRESETS[ctx.ort_preset]
        method = getattr(CalibrationMethod, CALIB_METHODS[ctx.calib_method])
        quantize_static(
            str(prepped),
            str(dest),
            _Reader(ctx.calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=ctx.per_channel,
            activation_type=getattr(QuantType, preset["activation_type"]),
            weight_type=getattr(QuantType, preset["weight_type"]),
            reduce_range=preset["reduce_range"],
            calibrate_method=method,
            # the classifier's logits stay float (int8 weights and input, int32 accumulation): rounded onto
            # an 8-bit grid, close top-2 classes would fall on one step before the float softmax
            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
            nodes_to_exclude=softmax_nodes(prepped),  # probabilities stay float32: quantized, they no longer sum to 1
        )
    finally:
        prepped.unlink(missing_ok=True)


def export_tflite_base(ctx: ExportContext, dest: Path) -> None:
    """fp32 TFLite with litert-torch; NHWC input (what mobile apps feed) unless asked otherwise."""
    import litert_torch

    model, sample = ctx.model, ctx.sample
    if ctx.nhwc:
        model, sample = litert_torch.to_channel_last_io(model, args=[0]), sample.permute(0, 2, 3, 1).contiguous()
    litert_torch.convert(model.eval(), (sample,)).export(str(dest))


def _quantize_tflite(base: Path, dest: Path, recipe, calibration: np.ndarray | None, nhwc: bool) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(str(base))
    qt.load_quantization_recipe(recipe)
    result = None
    if qt.need_calibration:
        signature = Interpreter(model_path=str(base)).get_signature_list()
        key = next(iter(signature))
        name = signature[key]["inputs"][0]
        batch = calibration.transpose(0, 2, 3, 1) if nhwc else calibration
        result = qt.calibrate(
            {key: [{name: batch[i : i + 1]} for i in range(len(batch))]}, num_threads=os.cpu_count() or 1
        )
    qt.quantize(result, enable_progress_report=False).export_model(str(dest), overwrite=True)


def tflite_fp16(base: Path, dest: Path, ctx: ExportContext) -> None:
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    _quantize_tflite(base, dest, manager.get_quantization_recipe(), None, ctx.nhwc)


def tflite_dynamic_int8(base: Path, dest: Path, ctx: ExportContext) -> None:
    from ai_edge_quantizer import recipe

    _quantize_tflite(base, dest, recipe.dynamic_wi8_afp32(), None, ctx.nhwc)


def int8_float_edges_recipe():
    """ai-edge-quantizer's ``static_wi8_ai8`` (int8 weights and activations, int8 kernels) with float32 edges.

    The INPUT and OUTPUT pseudo-ops are left unquantized, so the graph starts with a QUANTIZE and ends
    in float32: MediaPipe's ImageClassifier refuses int8 input, and takes float32 input normalized
    by the metadata's NormalizationOptions, exactly as the runtime feeds every other file. The
    classifier's FULLY_CONNECTED keeps int8 weights but computes in float (weight-only), so the logits
    are not rounded onto an int8 grid, and the SOFTMAX runs in float32.
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    ops = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(regex=".*", operation_name=ops.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    for op in (ops.INPUT, ops.OUTPUT, ops.SOFTMAX):
        manager.add_quantization_config(
            regex=".*", operation_name=op, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE
        )
    manager.add_weight_only_config(regex=".*", operation_name=ops.FULLY_CONNECTED, num_bits=8)
    return manager.get_quantization_recipe()


def tflite_int8(base: Path, dest: Path, ctx: ExportContext) -> None:
    _quantize_tflite(base, dest, int8_float_edges_recipe(), ctx.calibration, ctx.nhwc)


def copy_base(base: Path, dest: Path, ctx: ExportContext) -> None:
    dest.write_bytes(base.read_bytes())


def embed_onnx_metadata(path: Path, props: dict[str, str], description: str = "") -> None:
    """``props`` as the file's metadata_props (replacing any), ``description`` as its doc_string."""
    import onnx

    model = onnx.load(str(path))
    model.doc_string = description
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def embed_tflite_metadata(path: Path, out: Path, *, labels: list[str], spec, info: dict) -> None:
    from export.tflite_metadata import add_metadata

    extra = {"floraedge.json": json.dumps({"spec": spec.to_dict(), "info": info}, indent=1).encode()}
    add_metadata(
        path,
        out,
        labels=labels,
        mean=tuple(m * 255 for m in spec.mean),
        std=tuple(s * 255 for s in spec.std),
        name=f"FloraEdge {info.get('arch', '')} {info.get('precision', '')}".strip(),
        description=f"{classifier_title(info.get('dataset', {}).get('name'), len(labels))}, exported by FloraEdge",
        output_description=f"Softmax probabilities of the {len(labels)} classes.",
        extra_files=extra,
    )
