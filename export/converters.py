"""The converters behind the format table: PyTorch -> ONNX / TFLite, and their quantized variants.

Base files (fp32, no metadata) are made once per format; every precision derives from them. The
rows of ``export.formats.FORMATS`` name which function makes each file. Every file ends in a
float32 softmax: its output is probabilities (see ``WithSoftmax``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_runtime import console
from edge_runtime.backends import fixed_batch, in_batches_of, padded_to
from edge_runtime.classify import softmax
from edge_runtime.metadata import PROBABILITIES, classifier_title
from edge_runtime.modelfile import model_files
from export.config import ExportConfig
from export.formats import CALIB_METHODS, ORT_PRESETS

ONNX_OPSET = 17
SENSITIVITY_IMAGES = 32  # calibration images that rank the layers' sensitivity to 7-bit weights


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
    output: str = PROBABILITIES  # what the base file outputs: export's ends in a softmax, quantize's says (its info)


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

    # The converter clamps weights smaller than float16 can hold (|w| < 1e-7) to +-1e-7 and warns once per
    # weight: such weights add nothing a float16 output can show, and the fp16 gate checks the whole file.
    with console.harmless(category=UserWarning, message="the float32 number", module="onnxconverter_common"):
        model = float16.convert_float_to_float16(onnx.load(str(base)), keep_io_types=True)
    onnx.save(model, str(dest))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory batch, in slices of ``size`` images (a model
    with a fixed batch takes exactly that many; the last slice is padded by repeating its last image, which moves
    no min/max range)."""

    def __init__(self, batch: np.ndarray, name: str = "input", size: int = 1):
        self.items = iter([{name: padded_to(batch[i : i + size], size)} for i in range(0, len(batch), size)])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):
        raise NotImplementedError


def image_input(model_path: Path) -> tuple[str, int]:
    """The graph's image input: its name (ours is "input", a foreign file's (``floraedge quantize``) may be named
    otherwise) and how many images it takes at once (the batch it fixes, as a plain ``torch.onnx.export`` file
    fixes the traced one; 1 where the batch is free)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    first = next(i for i in graph.input if i.name not in initializers)
    dims = first.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return first.name, fixed_batch(shape) or 1


def softmax_nodes(model_path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type == "Softmax"]


def depthwise_weights(model_path: Path) -> list[str]:
    """The weight initializers of the depthwise convolutions (one input and one output channel per group).

    ONNX Runtime runs these with its depthwise kernel (MlasConvDepthwise), which subtracts the zero points
    and widens every operand to 16 bits before multiplying, and sums in int32: no pair of products is
    squeezed into int16 as in the GEMM kernel of every other Conv, Gemm and MatMul, so 8-bit weights cannot
    saturate there on any CPU (checked on an emulated CPU without VNNI: docs/results.md).
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    names = []
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if shape and group > 1 and shape[1] == 1 and shape[0] == group:
            names.append(node.input[1])
    return names


def weight_range_overrides(model_path: Path, weights_7bit: str, per_channel: bool) -> dict:
    """ONNX Runtime's TensorQuantOverrides that give the depthwise weights their full 8 bits when only the
    weights of pair-summing kernels must be 7-bit (``weights_7bit == "paired"``; export.formats.ORT_PRESETS)."""
    if weights_7bit != "paired":
        return {}
    full = {"axis": 0, "reduce_range": False} if per_channel else {"reduce_range": False}
    return {name: [full] for name in depthwise_weights(model_path)}


def pair_summing_nodes(model_path: Path) -> list[tuple[str, str]]:
    """(node, weight) of every Conv and Gemm that x86's GEMM kernel runs (every one but the depthwise ones)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    depthwise = set(depthwise_weights(model_path))
    return [
        (n.name, n.input[1])
        for n in graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in initializers
        if n.input[1] not in depthwise
    ]


def seven_bit(weight: np.ndarray) -> np.ndarray:
    """``weight`` rounded as onnxruntime's reduced range stores it: symmetric per output channel, [-64, 64]."""
    flat = weight.reshape(weight.shape[0], -1)
    scale = np.maximum(np.abs(flat).max(1, keepdims=True), 1e-12) / 64
    return (np.clip(np.round(flat / scale), -64, 64) * scale).reshape(weight.shape).astype(weight.dtype)


def most_sensitive_to_7_bit_weights(
    model_path: Path, batch: np.ndarray, count: int, output: str = PROBABILITIES
) -> list[tuple[str, str]]:
    """(node, weight) of the ``count`` pair-summing nodes whose weights, rounded to 7 bits alone in the float
    model, move its probabilities most (mean KL divergence on ``batch``). Weight-only and in float, so one
    cheap pass per layer."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    if count <= 0:
        return []
    model = onnx.load(str(model_path))
    weights = {t.name: t for t in model.graph.initializer}

    def probabilities(proto) -> np.ndarray:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]

        def run(part: np.ndarray) -> np.ndarray:
            return session.run(None, {first.name: part})[0]

        outputs = in_batches_of(fixed_batch(first.shape), run, batch)
        return outputs if output == PROBABILITIES else softmax(outputs)  # a foreign file's logits: the KL needs both

    reference = probabilities(model)
    scores = {}
    for node, weight in pair_summing_nodes(model_path):
        original = numpy_helper.to_array(weights[weight])
        weights[weight].CopyFrom(numpy_helper.from_array(seven_bit(original), weight))
        moved = probabilities(model)
        weights[weight].CopyFrom(numpy_helper.from_array(original, weight))
        kl = np.sum(reference * (np.log(reference + 1e-12) - np.log(moved + 1e-12)), axis=1)
        scores[(node, weight)] = float(np.mean(kl))
    return sorted(scores, key=scores.get, reverse=True)[:count]


def on_graph_input(model_path: Path) -> set[str]:
    """The nodes that read a graph input (the float image): left unquantized they stay float in ONNX Runtime.
    A float node between a DequantizeLinear and a QuantizeLinear does not: ONNX Runtime's session quantizes
    its weights to 8 bits at load (checked on its optimized graph), which x86 without VNNI saturates on."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    return {n.name for n in graph.node if n.input and n.input[0] in inputs}


def exact_layer_overrides(sensitive: list[tuple[str, str]], model_path: Path, per_channel: bool):
    """(nodes left in float, weight overrides): the ``sensitive`` layers keep 8-bit weights in a form no CPU
    saturates on: float where the layer reads the float input, else uint8 weights (symmetric, zero point 128),
    which ONNX Runtime runs with its uint8 x uint8 kernel (16-bit products summed in int32, documented as
    free of the saturation of uint8 x int8)."""
    from onnxruntime.quantization import QuantType

    first = on_graph_input(model_path)
    in_float = [node for node, _ in sensitive if node in first]
    uint8 = {"quant_type": QuantType.QUInt8, "symmetric": True, "reduce_range": False} | (
        {"axis": 0} if per_channel else {}
    )
    return in_float, {weight: [uint8] for node, weight in sensitive if node not in first}


def onnx_int8(base: Path, dest: Path, ctx: ExportContext) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = dest.with_name(dest.name + ".pre.onnx")
    try:
        quant_pre_process(str(base), str(prepped), skip_symbolic_shape=True)
        preset = ORT_PRESETS[ctx.ort_preset]
        method = getattr(CalibrationMethod, CALIB_METHODS[ctx.calib_method])
        overrides = weight_range_overrides(prepped, preset["weights_7bit"], ctx.per_channel)
        # the layers that 7-bit weights hurt most keep 8 bits in a form whose kernels cannot saturate
        sensitive = most_sensitive_to_7_bit_weights(
            prepped, ctx.calibration[:SENSITIVITY_IMAGES], preset["exact_layers"], ctx.output
        )
        in_float, uint8 = exact_layer_overrides(sensitive, prepped, ctx.per_channel)
        # onnxruntime logs (root logger) each bias it clips to int32: the bias of a channel whose weights are
        # all ~0 (its scale ~1e-11), whose constant output is then lost, as in the int8 TFLite file (see the
        # cast warning in _quantize_tflite); the gate measures the file with it
        with console.harmless(message="Quantized bias .* exceeds the range of a int32", loggers=("root",)):
            quantize_static(
                str(prepped),
                str(dest),
                _Reader(ctx.calibration, *image_input(prepped)),
                quant_format=QuantFormat.QDQ,
                per_channel=ctx.per_channel,
                activation_type=getattr(QuantType, preset["activation_type"]),
                weight_type=getattr(QuantType, preset["weight_type"]),
                reduce_range=preset["weights_7bit"] != "none",  # onnxruntime's reduced range: [-64, 64]
                calibrate_method=method,
                extra_options={
                    # the classifier's logits stay float (int8 weights and input, int32 accumulation): rounded onto
                    # an 8-bit grid, close top-2 classes would fall on one step before the float softmax
                    "OpTypesToExcludeOutputQuantization": ["Gemm"],
                    "TensorQuantOverrides": overrides | uint8,
                },
                # probabilities stay float32: quantized, they no longer sum to 1
                nodes_to_exclude=softmax_nodes(prepped) + in_float,
            )
    finally:
        prepped.unlink(missing_ok=True)


def export_tflite_base(ctx: ExportContext, dest: Path) -> None:
    """fp32 TFLite with litert-torch; NHWC input (what mobile apps feed) unless asked otherwise."""
    # litert-torch's import registers an Enum with torch's pytree, which torch now supports natively and
    # logs as deprecated: a note to litert-torch's authors, nothing about our model. Its converter's native
    # code logs before anything set up absl's logging, so absl first says where its lines go ("All log
    # messages before absl::InitializeLog() is called are written to STDERR"): a note about logging itself
    # (the INFO lines that follow are off by TF_CPP_MIN_LOG_LEVEL, edge_runtime/console.py).
    with (
        console.harmless(loggers=("torch.utils._pytree",)),
        console.native_stderr(r"WARNING: All log messages before absl::InitializeLog\(\) is called"),
    ):
        import litert_torch

        model, sample = ctx.model, ctx.sample
        if ctx.nhwc:
            model = litert_torch.to_channel_last_io(model, args=[0])
            sample = sample.permute(0, 2, 3, 1).contiguous()
        litert_torch.convert(model.eval(), (sample,)).export(str(dest))


def _quantize_tflite(base: Path, dest: Path, recipe, calibration: np.ndarray | None, nhwc: bool) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(str(base))
    qt.load_quantization_recipe(recipe)
    result = None
    # ai-edge-quantizer draws tqdm bars for calibration and for its tensor transformations, with no switch;
    # its calibration interpreter keeps every intermediate tensor (to read their ranges), for which LiteRT
    # warns "intended for debugging purposes only": here it is the intent. Its "invalid value encountered in
    # cast" is no NaN: a channel whose folded weights are all ~0 (scale ~1e-11) has an int32 bias
    # (bias / (input scale x weight scale)) of ~1e10-1e12, clipped to int32's range; the float32 upper
    # bound, 2**31, overflows the cast. Such a channel's constant output (its bias) is lost either way;
    # the int8 gate measures the file with it (docs/results.md, "int8 ONNX as accurate as the int8 TFLite").
    with (
        console.third_party_progress(),
        console.harmless(category=UserWarning, message="Warning: Enabling `experimental_preserve_all_tensors`"),
        console.harmless(
            category=RuntimeWarning, message="invalid value encountered in cast", module="ai_edge_quantizer"
        ),
    ):
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


def ncnn_fp32(base: Path, dest: Path, ctx: ExportContext) -> None:
    ncnn_from_onnx(base, dest, ctx, fp16=False)


def ncnn_fp16(base: Path, dest: Path, ctx: ExportContext) -> None:
    ncnn_from_onnx(base, dest, ctx, fp16=True)


def ncnn_from_onnx(base: Path, dest: Path, ctx: ExportContext, *, fp16: bool) -> None:
    """pnnx's ONNX path: ``dest`` (the ``.param`` graph) and its ``.bin`` weights, float32 or float16 weights.

    pnnx gets the base file with every weight inside it. torch's exporter can put the weights in a data file
    beside the model (``<model>.onnx.data``, named inside the file): pnnx 20261020 reads it only from beside a
    file of that same name, and given a copy renamed ``model.onnx`` (pnnx tells ONNX by the suffix; the exporter's
    base may be ``base.ncnn``) it wrote all-zero weights, with no error. It also writes its intermediate files
    (a simplified ONNX, its own graph, Python scripts) beside its input: so its input is a copy, in a folder of its
    own inside this child's temporary folder (export.isolation removes it).
    """
    import onnx
    import pnnx

    work = Path(tempfile.mkdtemp(prefix="pnnx."))
    model = work / "model.onnx"
    onnx.save(onnx.load(str(base)), str(model))  # onnx.load reads external data in: one self-contained file
    param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
    shape = ",".join(map(str, ctx.sample.shape))
    outputs = {"ncnnparam": param, "ncnnbin": weights, "ncnnpy": work / "model_ncnn.py", "pnnxparam": work / "p.param"}
    outputs |= {"pnnxbin": work / "p.bin", "pnnxpy": work / "p_pnnx.py", "pnnxonnx": work / "p.pnnx.onnx"}
    command = [pnnx.EXEC_PATH, str(model), f"inputshape=[{shape}]f32", f"fp16={int(fp16)}", "device=cpu"]
    done = subprocess.run(
        command + [f"{key}={value}" for key, value in outputs.items()], cwd=work, capture_output=True, text=True
    )
    if done.returncode != 0 or not (param.is_file() and weights.is_file()):
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise RuntimeError(f"pnnx failed (exit code {done.returncode}): {said[-1] if said else 'no output'}")
    sys.stderr.write(done.stdout)  # the parent shows the child's stderr under --verbose (export.isolation)
    shutil.move(weights, model_files(dest)[1])
    shutil.move(param, dest)  # last: the graph is there only with its weights beside it


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
