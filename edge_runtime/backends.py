"""Inference backends behind one small interface: ``load(path) -> Backend``.

A backend has ``.name``, ``.info`` (spec + labels) and ``.predict(batch) -> outputs``, where
``batch`` is float32 in the spec's layout and the outputs are float32 probabilities or logits, as
``info.output`` says. Each runtime is imported inside its backend, so a
device needs only the one it uses; a missing one is an error naming the package to install.

``load`` is the one way in, and applies the same checks whatever the backend: the file itself
(``edge_runtime.modelfile.check_model_file``) before any runtime opens it, then a trial run on a
zero input that proves the model runs and gives one score per label. A runtime's failure while
running a model is an ``InferenceError``, one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import platform
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import console
from edge_runtime.errors import FloraEdgeError, InferenceError
from edge_runtime.foreign import FileFacts, ModelOverrides, read_facts, resolve_info
from edge_runtime.metadata import MetadataError
from edge_runtime.modelfile import check_model_file, model_files


class BackendError(FloraEdgeError):
    """A model file that no backend can run, or a runtime that is not installed."""


def import_runtime(module: str, backend: str):
    """``module``, or an error naming the package (from ``BACKENDS``) that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        entry = BACKENDS[backend]
        raise BackendError(
            f"this backend needs {module}: pip install {entry.package}  (or `pip install floraedge[{entry.extra}]`)"
        ) from exc


class OnnxRuntimeBackend:
    """ONNX Runtime; execution providers selectable (CPU, CUDA, TensorRT on a Jetson)."""

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        qdq_emulation: bool = False,
        overrides: ModelOverrides | None = None,
    ):
        """``qdq_emulation``: run an int8 QDQ file as its float emulation (no graph fusion, so no integer
        kernels): what the file means, on any CPU; slower. The export gate uses it for files made for
        another CPU's kernels."""
        ort = import_runtime("onnxruntime", self.name)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if qdq_emulation:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        available = ort.get_available_providers()
        wanted = providers or ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(
                f"execution providers {missing} are not in this onnxruntime build; available: {available}"
            )
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BackendError(f"{path} is not a model onnxruntime can load ({one_line(exc)})") from exc
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.batch_size = fixed_batch(first.shape)
        self.input_dtype = ORT_INPUT_TYPES.get(first.type, np.float32)  # uint8 inputs take pixels, rounded
        self.input_details = {"name": first.name, "shape": list(first.shape), "dtype": np.dtype(self.input_dtype).name}
        out_shape = self.session.get_outputs()[0].shape
        outputs = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else 0
        self.info = resolve_info(path, overrides, outputs, self.input_details)
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"  # not CUDA/TensorRT's kernels
        if on_cpu and not qdq_emulation and int8_kernels_may_saturate(self.info.info):
            warnings.warn(
                f"{path.name}: this x86 CPU has no VNNI, and ONNX Runtime's int8 kernels on it saturate with "
                "8-bit weights (accuracy points lost: docs/export.md). Use the .tflite file, or "
                "re-export with `floraedge export` (its default x86 preset has 7-bit weights, right on every CPU).",
                RuntimeWarning,
                stacklevel=3,  # the caller of load()
            )
        if on_cpu and not qdq_emulation and uint8_layers_miscomputed(self.info.info, ort.__version__):
            self.session = session_around_amx_uint8_bug(ort, path, options, wanted, self.session, self.info.info)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with inference_errors(self.name):
            return in_batches_of(self.batch_size, self._run, batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: as_input(batch, self.input_dtype)})[0]


ORT_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def fixed_batch(shape) -> int | None:
    """The batch size a model's input shape fixes (a plain ``torch.onnx.export`` file takes exactly the batch it
    was traced with, usually 1), or None where the batch dimension is free."""
    first = shape[0] if shape else None
    return first if isinstance(first, int) and first > 0 else None


def padded_to(part: np.ndarray, size: int) -> np.ndarray:
    """``part`` (at most ``size`` images) made ``size`` long by repeating its last image."""
    return part if len(part) == size else np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])


def in_batches_of(size: int | None, run, batch: np.ndarray) -> np.ndarray:
    """``run`` over ``batch`` in slices of the model's fixed batch ``size``, the last slice padded (``padded_to``) and
    the padding's outputs dropped; one call where the batch is free, empty or already that size."""
    if size is None or len(batch) in (0, size):
        return run(batch)
    parts = [batch[start : start + size] for start in range(0, len(batch), size)]
    return np.concatenate([run(padded_to(part, size))[: len(part)] for part in parts])


def as_input(batch: np.ndarray, dtype) -> np.ndarray:
    """``batch`` as the model's input type: float32 as is; uint8 (a model that takes plain pixels, 0-255) rounded and
    clipped."""
    if dtype == np.float32:
        return batch.astype(np.float32, copy=False)
    return np.clip(np.rint(batch), 0, 255).astype(np.uint8)


SATURATION_FREE_WEIGHT_ABS_MAX = 64  # 255 * 64 * 2 fits the int16 sum of VPMADDUBSW's product pairs
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of CPUs with exact int8 dot products


def is_int8_onnx(info: dict) -> bool:
    return info.get("format") == "onnx" and info.get("precision") == "int8"


def int8_kernels_may_saturate(info: dict, machine: str | None = None, cpu_flags: set[str] | None = None) -> bool:
    """An int8 ONNX file whose weights use more than 7 bits (or do not say), on an x86 CPU without VNNI."""
    if not is_int8_onnx(info):
        return False
    if (info.get("onnx_int8") or {}).get("weight_abs_max", 127) <= SATURATION_FREE_WEIGHT_ABS_MAX:
        return False
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return False
    flags = linux_cpu_flags() if cpu_flags is None else cpu_flags
    return bool(flags) and not flags & set(VNNI_FLAGS)  # no flags (not Linux): unknown, no warning


# onnxruntime's AMX uint8 x uint8 kernel gives wrong, run-to-run varying sums in these versions (major, minor:
# from, up to but not including): 1.21.1 to 1.24.4 measured wrong on an AMX Xeon, 1.20.1 and 1.25.1 to 1.32.0 right,
# and no version wrong on a CPU without AMX nor on aarch64 (docs/export.md, "ONNX Runtime 1.21 to 1.24 on AMX CPUs")
AMX_UINT8_KERNEL_WRONG = ((1, 21), (1, 25))


def uint8_layers_miscomputed(info: dict, ort_version: str, cpu_flags: set[str] | None = None) -> bool:
    """An ONNX file that has or may have uint8-weight layers (an int8 file of the x86 preset, whose ``exact_layers``
    are uint8 x uint8, or a file that does not say what it holds), on an onnxruntime whose AMX kernel for them is
    wrong, on a CPU with AMX."""
    if info.get("format", "onnx") != "onnx" or info.get("precision", "int8") != "int8":
        return False  # a float file (foreign files say neither)
    if (info.get("onnx_int8") or {}).get("exact_layers") == 0:
        return False  # an int8 file made without uint8 weights
    first, fixed = AMX_UINT8_KERNEL_WRONG
    if not first <= tuple(int(p) for p in re.findall(r"\d+", ort_version)[:2]) < fixed:
        return False
    return "amx_int8" in (linux_cpu_flags() if cpu_flags is None else cpu_flags)


# The weight input of each integer operator: uint8 weights there run on the same kernels, and cannot be rewritten
# (their zero points are part of the operator)
INTEGER_OPERATOR_WEIGHTS = {"QLinearConv": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1}


@dataclass(frozen=True)
class Uint8Rewrite:
    """``uint8_weights_as_int8``'s result: the model, how many uint8 weights it stores as int8, how many it left."""

    model: bytes
    rewritten: int
    left: int


def uint8_weights_as_int8(path: Path) -> Uint8Rewrite:
    """``path``'s ONNX model with every symmetric uint8 weight (a DequantizeLinear of a uint8 initializer whose zero
    points are one value that leaves every weight in int8's range: 128 as the x86 preset writes them) stored as int8
    (the same integers less the zero point, zero point 0): the same values, which onnxruntime runs with its uint8 x
    int8 kernel. Exact on a CPU with VNNI (every AMX CPU has it), where that kernel cannot saturate. ``left`` counts
    the uint8 weights int8 cannot hold: asymmetric ones, and those of integer operators (QLinearConv and the like).
    Needs the onnx package."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = set(initializers) | {name for node in graph.node for name in (*node.input, *node.output)}
    listed = {i.name for i in graph.input}  # older files also list their initializers as graph inputs
    renamed, rewritten, left = {}, 0, 0

    def uint8(name: str) -> bool:
        return name in initializers and initializers[name].data_type == onnx.TensorProto.UINT8

    for node in graph.node:
        weight_input = INTEGER_OPERATOR_WEIGHTS.get(node.op_type)
        if weight_input is not None and len(node.input) > weight_input and uint8(node.input[weight_input]):
            left += 1
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or not uint8(node.input[0]):
            continue
        if node.input[2] not in initializers:
            left += 1
            continue
        zero_points = numpy_helper.to_array(initializers[node.input[2]]).astype(np.int16)
        shifted = numpy_helper.to_array(initializers[node.input[0]]).astype(np.int16) - zero_points.flat[0]
        if np.any(zero_points != zero_points.flat[0]) or shifted.min() < -128 or shifted.max() > 127:
            left += 1  # not symmetric: int8 cannot hold the same values
            continue
        # new initializers, so that another node reading the old ones is left as it was
        for index, value in ((0, shifted.astype(np.int8)), (2, np.zeros(zero_points.shape, np.int8))):
            old = node.input[index]
            if old not in renamed:
                renamed[old] = unused_name(f"{old}_as_int8", taken)
                graph.initializer.append(numpy_helper.from_array(value, renamed[old]))
                if old in listed:
                    graph.input.append(
                        onnx.helper.make_tensor_value_info(renamed[old], onnx.TensorProto.INT8, value.shape)
                    )
            node.input[index] = renamed[old]
        rewritten += 1
    # the old ones that no node reads any more go (onnxruntime would log each one it drops, or ask for a listed one)
    read = {name for node in graph.node for name in node.input}
    unread = set(renamed) - read
    for entries in (graph.initializer, graph.input):
        for entry in [e for e in entries if e.name in unread]:
            entries.remove(entry)
    return Uint8Rewrite(model.SerializeToString() if rewritten else b"", rewritten, left)


def unused_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name`` with the first number that makes it unused; added to ``taken``."""
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def session_around_amx_uint8_bug(ort, path: Path, options, providers: list[str], session, info: dict):
    """A session that computes ``path``'s uint8-weight layers right on an onnxruntime whose AMX kernel gets them wrong
    (``uint8_layers_miscomputed``): ``session`` where the file has none; else their weights as int8
    (``uint8_weights_as_int8``: same values, full speed). For an x86-preset file that cannot be rewritten (no onnx
    package, a file onnx cannot read) the file's exact QDQ emulation (right, several times slower). A warning says
    what the runtime could not make right, and why."""
    ours = bool((info.get("onnx_int8") or {}).get("exact_layers"))
    wrong_here = f"{path.name}: onnxruntime {ort.__version__} computes uint8-weight layers wrongly on this CPU (AMX)"
    upgrade = "onnxruntime >= 1.25 (Python >= 3.11) computes them right (docs/export.md, 'ONNX Runtime 1.21 to 1.24 "
    upgrade += "on AMX CPUs')"
    try:
        rewrite = uint8_weights_as_int8(path)
    except ImportError:
        why = "the onnx package, which the runtime needs to check and rewrite them, is not installed (pip install onnx)"
    except Exception as exc:  # a file over protobuf's 2 GB, or one the onnx package cannot read
        why = f"its weights could not be read to rewrite them ({one_line(exc)})"
    else:
        if rewrite.left:
            warnings.warn(
                f"{wrong_here}, and {rewrite.left} of this file's uint8 weights cannot be stored as int8 with the same "
                f"values (asymmetric, or an integer operator's): its outputs may be wrong. {upgrade}.",
                RuntimeWarning,
                stacklevel=4,  # the caller of load()
            )
        return ort.InferenceSession(rewrite.model, options, providers=providers) if rewrite.rewritten else session
    if not ours:  # a file that does not say whether it has uint8 weights: it runs as it is
        warnings.warn(
            f"{wrong_here}; whether this file has any could not be checked: {why}. {upgrade}.",
            RuntimeWarning,
            stacklevel=4,
        )
        return session
    warnings.warn(
        f"{wrong_here}, which this file has (the x86 preset's exact layers), and {why}; so it runs as its exact QDQ "
        f"emulation: right, but about 6x slower. For full speed: pip install onnx, or the .tflite file; {upgrade}.",
        RuntimeWarning,
        stacklevel=4,
    )
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=providers)


def linux_cpu_flags(text: str | None = None) -> set[str]:
    """The x86 ``flags`` of /proc/cpuinfo (or of ``text``); empty elsewhere (ARM lists ``Features``)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


class OpenCVBackend:
    """OpenCV DNN on a float ONNX file (no extra package on a device that has OpenCV)."""

    name = "opencv"

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        overrides: ModelOverrides | None = None,
    ):
        import cv2

        if threads:
            cv2.setNumThreads(threads)
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise BackendError(
                f"OpenCV DNN cannot load {path} (int8 QDQ files are not supported; use onnxruntime): {one_line(exc)}"
            ) from exc
        self.lock = threading.Lock()
        facts = read_facts(path)  # OpenCV reads no metadata_props nor input shape: the file's walk does
        self.input_details = facts.onnx_input or {"name": "", "shape": [], "dtype": "unknown"}
        self.batch_size = fixed_batch(self.input_details["shape"])
        self.info = resolve_info(path, overrides, 0, self.input_details, facts)  # outputs: load()'s trial run

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # the net holds one input and one output: calls at once (serve --concurrency) take turns
        with inference_errors(self.name), self.lock:
            return in_batches_of(self.batch_size, self._run, batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.net.setInput(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(self.net.forward(), dtype=np.float32).reshape(batch.shape[0], -1)


class OpenVINOBackend:
    """OpenVINO on the exported ONNX files as they are (fp32, fp16, int8 QDQ), on its CPU plugin.

    Precision is pinned to f32: on a CPU with bf16 (AVX-512 BF16, AMX) OpenVINO otherwise computes a float
    model in bf16 (on ARM: f16), which moves its outputs enough to change near-ties (docs/runtimes.md). What ran
    is read back from the compiled model into ``info.info["inference_precision"]`` for the bench report and the
    arm64 agreement."""

    name = "openvino"
    PRECISION = "f32"

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        overrides: ModelOverrides | None = None,
    ):
        ov = import_runtime("openvino", self.name)
        config = {"INFERENCE_PRECISION_HINT": self.PRECISION, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            core = ov.Core()
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError (and its own types) with multi-line messages
            raise BackendError(f"{path} is not a model OpenVINO can load ({one_line(exc)})") from exc
        # an infer request serves one call at a time: one per thread (serve runs several inferences at once)
        self.requests = threading.local()
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        first = model.inputs[0]
        shape = [d.get_length() if d.is_static else -1 for d in first.get_partial_shape()]
        self.batch_size = fixed_batch(shape)
        self.input_details = {"name": first.get_any_name(), "shape": shape, "dtype": "float32"}
        info = resolve_info(path, overrides, 0, self.input_details)  # its output size: load()'s trial run
        self.info = dataclasses.replace(info, info={**info.info, "inference_precision": ran})

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with inference_errors(self.name):
            return in_batches_of(self.batch_size, self._run, batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self.requests, "request", None)
        if request is None:
            request = self.requests.request = self.compiled.create_infer_request()
        outputs = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(outputs[0], dtype=np.float32)  # a copy: the request reuses its output buffer


def _tflite_interpreter():
    """ai-edge-litert's interpreter, or tflite_runtime's where that is what a device has."""
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(module).Interpreter
        except ImportError:
            continue
    package = BACKENDS[LiteRTBackend.name].package
    raise BackendError(f"this backend needs a TFLite interpreter: pip install {package} (or tflite-runtime)")


class LiteRTBackend:
    """LiteRT (TFLite). Exported files take float32 and return float32 (an int8 file quantizes inside);
    int8/uint8 inputs and outputs of other files are (de)quantized from the tensor details."""

    name = "litert"

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        overrides: ModelOverrides | None = None,
    ):
        Interpreter = _tflite_interpreter()
        self.lock = threading.Lock()
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # ValueError, RuntimeError or the interpreter's own types: one line whatever it is
            raise BackendError(f"{path} is not a model LiteRT can load ({one_line(exc)})") from exc
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_details = {
            "name": self.input["name"],
            "shape": [int(d) for d in self.input["shape"]],
            "dtype": np.dtype(self.input["dtype"]).name,
            "quantization": tuple(self.input["quantization"]),
        }
        self.info = resolve_info(path, overrides, int(self.output["shape"][-1]), self.input_details)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        results = []
        # the interpreter holds one input and one output tensor: calls at once (serve --concurrency) take turns
        with inference_errors(self.name), self.lock:
            for sample in batch:  # TFLite models are exported with a fixed batch of one
                self.interpreter.set_tensor(self.input["index"], quantize(sample[None], self.input))
                self.interpreter.invoke()
                results.append(dequantize(self.interpreter.get_tensor(self.output["index"]), self.output))
        return np.concatenate(results)


# ncnn's options that let it store or compute in 16 bits where the CPU can (its default on ARMv8.2 CPUs such as
# the Pi 5's, and in part on x86 CPUs with F16C or AVX512-FP16): an fp32 file is run with every one of them off
NCNN_16BIT_OPTIONS = (
    "use_fp16_packed",
    "use_fp16_storage",
    "use_fp16_arithmetic",
    "use_bf16_packed",
    "use_bf16_storage",
)


class NcnnBackend:
    """ncnn: a ``.param`` graph with its ``.bin`` weights beside it; spec, labels and info in the sidecar
    ``<model>.param.json`` (the format embeds none). Each image is fed as ``preprocess()`` made it (a CHW float
    Mat), not through ncnn's ``Mat.from_pixels_resize`` + ``substract_mean_normalize``: those resize the whole
    frame with no centre crop, so the model would see another input than the one its export was verified on.

    ``compute`` says what ran: an fp32 file runs in fp32 (ncnn's 16-bit storage and arithmetic switched off, so
    its outputs are the file's on every CPU), an fp16 file with ncnn's defaults (16-bit where the CPU has it)."""

    name = "ncnn"

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        overrides: ModelOverrides | None = None,
    ):
        self.ncnn = import_runtime("ncnn", self.name)
        # the .param states no input shape and embeds no metadata: the sidecar or the user's options say it all
        self.input_details = {"name": "", "shape": [-1, -1, -1, -1], "dtype": "float32"}  # any size: ncnn runs it
        self.info = resolve_info(path, overrides, 0, self.input_details, FileFacts(None, None, None))
        if self.info.spec.layout != "NCHW":
            raise BackendError(
                f"{path}: ncnn takes NCHW input, but its spec gives {self.info.spec.layout}; re-export it"
            )
        self.net = self.ncnn.Net()
        self.net.opt.num_threads = threads or os.cpu_count() or 1
        self.compute = (
            "fp32"
            if self.info.info.get("precision", "fp32") == "fp32"
            else "ncnn default (16-bit where the CPU has it)"
        )
        if self.compute == "fp32":
            for option in NCNN_16BIT_OPTIONS:
                setattr(self.net.opt, option, False)
        weights = model_files(path)[1]
        # ncnn's loader says what failed in lines of its own on stderr and returns nonzero: the error below says it
        # in one line, and --verbose shows ncnn's lines
        with console.native_stderr(r"."):
            loaded = self.net.load_param(str(path)) == 0 and self.net.load_model(str(weights)) == 0
        if not loaded:
            raise BackendError(
                f"{path} with {weights.name} is not a model ncnn can load (a malformed .param, or weights that do not "
                "belong to it; --verbose shows ncnn's own messages); re-export it with `floraedge export`"
            )
        inputs, outputs = self.net.input_names(), self.net.output_names()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(
                f"{path} has inputs {inputs} and outputs {outputs}; FloraEdge runs one image in, one score vector out"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        results = []
        with inference_errors(self.name):
            # ncnn runs any shape it is given (no input shape in the file): anything but the spec's images is refused
            # here, where the other runtimes' own checks refuse it
            if np.ndim(batch) != 4 or tuple(np.shape(batch)[1:]) != self.info.spec.input_shape[1:]:
                raise ValueError(
                    f"input of shape {list(np.shape(batch))}, not a batch of {self.info.spec.input_shape[1:]}"
                )
            for sample in np.asarray(batch, dtype=np.float32):
                extractor = self.net.create_extractor()
                # a Mat made from an array points into it: its clone owns its data, so no layer can write into the caller's
                extractor.input(self.input_name, self.ncnn.Mat(np.ascontiguousarray(sample)).clone())
                status, out = extractor.extract(self.output_name)
                if status != 0:
                    raise RuntimeError(f"extracting {self.output_name!r} returned {status}")
                results.append(np.array(out, dtype=np.float32).reshape(1, -1))
        return np.concatenate(results)


def one_line(exc: BaseException, limit: int = 500) -> str:
    """A runtime's message as one line (OpenCV's span several), shortened to ``limit`` characters."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


@contextlib.contextmanager
def inference_errors(backend: str):
    """Any error of a runtime while it runs the model, as one ``InferenceError`` line."""
    try:
        yield
    except InferenceError:
        raise
    except Exception as exc:  # each runtime has its own types (ORT's derive from Exception alone, cv2.error, ...)
        raise InferenceError(
            f"{backend} failed to run the model ({one_line(exc)}); check that its spec matches the model "
            "(`floraedge inspect MODEL` shows the input it expects and the spec in use)"
        ) from exc


def quantize(x: np.ndarray, details: dict) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero_point = details["quantization"]
    scale = scale or 1.0  # an integer tensor without quantization parameters takes the values as they are
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, details: dict) -> np.ndarray:
    if np.dtype(details["dtype"]).kind == "f":
        return q.astype(np.float32)
    scale, zero_point = details["quantization"]
    return (q.astype(np.float32) - zero_point) * (scale or 1.0)


@dataclass(frozen=True)
class BackendEntry:
    suffixes: tuple[str, ...]
    load: type  # the backend class: its ``name`` is the key in BACKENDS
    package: str
    extra: str = "edge"  # the floraedge extra that installs it


# name (the backend's own ``.name``) -> the files it runs, its class and the pip package it needs
BACKENDS: dict[str, BackendEntry] = {
    entry.load.name: entry
    for entry in (
        BackendEntry((".onnx",), OnnxRuntimeBackend, "onnxruntime"),
        BackendEntry((".tflite",), LiteRTBackend, "ai-edge-litert"),
        BackendEntry((".onnx",), OpenCVBackend, "opencv-python-headless"),
        BackendEntry((".onnx",), OpenVINOBackend, "openvino", extra="edge-openvino"),
        BackendEntry((".param",), NcnnBackend, "ncnn", extra="edge-ncnn"),
    )
}


def load(
    path: str | Path,
    backend: str = "auto",
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    qdq_emulation: bool = False,
    overrides: ModelOverrides | None = None,
):
    """Open ``path`` with the named backend, or the first one whose file type matches.
    ``qdq_emulation``: onnxruntime only (see ``OnnxRuntimeBackend``). ``overrides``: what the user's options
    say about the model (``edge_runtime.foreign.resolve_info`` decides what wins)."""
    path = Path(path)
    if backend == "auto":
        backend = next((n for n, e in BACKENDS.items() if path.suffix.lower() in e.suffixes), "")
        if not backend:
            kinds = sorted({s for e in BACKENDS.values() for s in e.suffixes})
            raise BackendError(f"{path}: unknown model type {path.suffix!r}; FloraEdge runs {', '.join(kinds)} files")
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
    entry = BACKENDS[backend]
    if path.suffix.lower() not in entry.suffixes:
        raise BackendError(f"backend {backend} runs {', '.join(entry.suffixes)} files, not {path.name}")
    if qdq_emulation and backend != OnnxRuntimeBackend.name:
        raise BackendError(f"QDQ emulation is an onnxruntime mode, not {backend}'s")
    resolved = check_model_file(path).path  # the one check of the file itself, before any runtime opens it
    options = {"qdq_emulation": True} if qdq_emulation else {}
    opened = entry.load(resolved, threads=threads, providers=providers, overrides=overrides, **options)
    check_trial_run(opened, path)
    return opened


def check_trial_run(backend, path: Path) -> None:
    """The one check of what a loaded model does, for every backend: an input of its spec's shape runs and gives
    one score per label. (Unlabelled models get ``class_<i>`` names here.)"""
    spec = backend.info.spec
    try:
        outputs = np.asarray(backend.predict(np.zeros(spec.input_shape, np.float32)))
    except InferenceError as exc:
        raise BackendError(f"{path}: the model does not run on an input of its spec's shape: {exc}") from exc
    if outputs.ndim != 2 or outputs.shape[0] != 1:
        raise BackendError(
            f"{path}: one image gives outputs of shape {list(outputs.shape)}; FloraEdge runs classifiers "
            "whose output is one score per class"
        )
    labels = backend.info.labels or tuple(f"class_{i}" for i in range(outputs.shape[1]))
    if len(labels) != outputs.shape[1]:
        raise MetadataError(
            f"{path}: {len(labels)} labels but the model has {outputs.shape[1]} outputs; "
            "the labels belong to another model: re-export it with `floraedge export`"
        )
    backend.info = dataclasses.replace(backend.info, labels=labels)
