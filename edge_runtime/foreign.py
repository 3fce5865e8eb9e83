"""Models other tools wrote: what the runtime uses for a file, and where each part of it came from.

``resolve_info`` is the one place that decides a model's preprocessing spec, labels and output kind,
for every backend and command (``backends.load`` calls it). It stacks what is known, lowest first:

1. the file itself: its input shape (input size, layout) and the operator that makes its output
   (a softmax there: probabilities) -- source ``model``;
2. standard TFLite metadata (MediaPipe Model Maker, TFLite Support): NormalizationOptions, colour
   space, labels in a TENSOR_AXIS_LABELS file -- ``tflite-metadata``;
3. a sidecar beside the file (``<model>.json``, or ``spec.json`` + ``labels.txt``) -- ``sidecar``;
4. FloraEdge's own metadata embedded by ``floraedge export`` -- ``embedded``;
5. the user's options (``--spec FILE``, then ``--mean``, ``--labels``, ...) -- ``flags``.

A higher layer wins, and every value it changes is recorded as a note (``inspect`` and the commands
print them). Nothing is guessed: a file whose normalization, input size, layout or output kind no
layer states is refused with one line that names the options. The defaults that remain (RGB, a
resize to input size / 0.875, bilinear) are what ``PreprocessSpec`` defaults to, and are reported
as ``default``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.bounded import read_text_bounded
from edge_runtime.metadata import (
    LOGITS,
    PROBABILITIES,
    MetadataError,
    ModelInfo,
    from_props,
    from_sidecar,
    from_tflite_zip,
    malformed,
    parse_labels,
)
from edge_runtime.modelfile import open_regular, string_entry, wire_fields
from edge_runtime.options import Option, number
from edge_runtime.spec import CROP_FRACTION, INTERPOLATIONS, LAYOUTS, SPEC_VERSION, PreprocessSpec, SpecError

MODEL, STANDARD, SIDECAR, EMBEDDED = "model", "tflite-metadata", "sidecar", "embedded"
FLAGS, DEFAULT = "flags", "default"
SOURCES = (MODEL, STANDARD, SIDECAR, EMBEDDED, FLAGS, DEFAULT)  # lowest first, as they are stacked
VALUE_RANGES = {"0-1": 1.0, "0-255": 255.0}  # what the model's input pixels span -> the factor from 0..1
OUTPUT_KINDS = (LOGITS, PROBABILITIES)
SPEC_FIELDS = ("crop_size", "resize_size", "interpolation", "mean", "std", "color_order", "layout")
OPTION_NAMES = "--spec FILE, or --mean/--std/--value-range (and --input-size, --layout, --color-order where needed)"


@dataclass(frozen=True, kw_only=True)
class OverrideFields:
    """The options that say how to run a model that does not say it itself (or that replace what it says).

    Every command that loads a model inherits these fields (``ClassifyConfig``, ``RunConfig``,
    ``ServeConfig``, ``InspectConfig``), and ``OVERRIDE_OPTIONS`` is their one command-line declaration.
    """

    labels: Path | None = None
    spec: Path | None = None
    input_size: int | None = None
    resize_size: int | None = None
    interpolation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    color_order: str | None = None
    layout: str | None = None
    value_range: str | None = None
    output: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModelOverrides(OverrideFields):
    """``OverrideFields``, checked; ``of(config)`` takes them from any config that inherits them."""

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, 3):
                raise SpecError(f"--{name} takes 1 or 3 comma-separated values (R,G,B), got {len(values)}")
            if values is not None and not all(math.isfinite(v) for v in values):
                raise SpecError(f"--{name} values must be finite numbers, got {values}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise SpecError(f"--std values must be positive, got {','.join(map(str, self.std))}")
        if self.value_range is not None and self.value_range not in VALUE_RANGES:
            raise SpecError(f"--value-range is one of {', '.join(VALUE_RANGES)}, not {self.value_range!r}")
        if self.output is not None and self.output not in OUTPUT_KINDS:
            raise SpecError(f"--output is one of {', '.join(OUTPUT_KINDS)}, not {self.output!r}")
        if self.value_range is None and self.mean is not None and any(abs(v) > 1 for v in self.mean):
            raise SpecError(
                f"--mean {','.join(f'{v:g}' for v in self.mean)} is in 0-255 units: add --value-range 0-255 "
                "(mean and std are in the units of --value-range, 0-1 by default)"
            )

    @classmethod
    def of(cls, config) -> ModelOverrides:
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(OverrideFields)})

    def given(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(OverrideFields))


OVERRIDE_OPTIONS = {
    "labels": Option("class names, one per line in output order (for a file without them, or to replace them)"),
    "spec": Option("a preprocessing spec JSON, as `floraedge export` writes spec.json (any of its fields)"),
    "input_size": Option(
        "the model's input height = width in pixels (default: the file's input shape)", parse=number(low=1)
    ),
    "resize_size": Option("shorter side before the centre crop (default: input size / 0.875)", parse=number(low=1)),
    "interpolation": Option("resize filter when enlarging (default: bilinear)", choices=INTERPOLATIONS),
    "mean": Option("subtracted per channel, in --value-range units: 1 or 3 comma-separated values (R,G,B)"),
    "std": Option("divided by per channel, in --value-range units: 1 or 3 comma-separated values"),
    "color_order": Option("channel order the model takes (default: RGB)", choices=("RGB", "BGR")),
    "layout": Option("input layout (default: from the file's input shape)", choices=LAYOUTS),
    "value_range": Option(
        "the pixel scale before --mean/--std: 0-1 or 0-255; alone, the model takes plain pixels in that range",
        choices=tuple(VALUE_RANGES),
    ),
    "output": Option(
        "what the model outputs, where the file does not say (a softmax is applied to logits)", choices=OUTPUT_KINDS
    ),
}


# ---------------------------------------------------------------- what the file says


@dataclass(frozen=True)
class FileFacts:
    """What the model file itself states, before any option."""

    embedded: ModelInfo | None = None  # FloraEdge's metadata (ONNX metadata_props, a .tflite's floraedge.json)
    standard: dict | None = None  # standard TFLite metadata (``tflite_metadata.parse_metadata``)
    output_op: str | None = None  # the operator that makes the output: "SOFTMAX", "LOG_SOFTMAX", "other"
    onnx_input: dict | None = None  # an ONNX file's first input as its graph declares it (name, shape, dtype)


def read_facts(path: Path) -> FileFacts:
    """The FloraEdge metadata, standard TFLite metadata and output operator of ``path`` (``.onnx`` or ``.tflite``)."""
    if path.suffix.lower() == ".onnx":
        with open_regular(path, str(path)) as data, malformed(f"the ONNX graph of {path}"):
            graph = read_onnx_graph(data)
        return FileFacts(from_props(graph.props), None, graph.output_op, graph.first_input)
    from edge_runtime import tflite_metadata

    embedded = from_tflite_zip(path)
    with open_regular(path, str(path)) as data:
        raw = bytes(data)
    with malformed(f"the TFLite metadata of {path}"):
        standard = tflite_metadata.parse_metadata(raw, str(path))
        output_op = tflite_metadata.output_operator(raw, str(path))
    return FileFacts(embedded, standard, output_op)


# ONNX ops that keep what the scores mean: looked through to find the op that made them.
ONNX_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Cast", "QuantizeLinear", "DequantizeLinear"}
# onnx.proto field numbers: ModelProto, GraphProto, NodeProto, ValueInfoProto, TypeProto(.Tensor), TensorShapeProto
MODEL_GRAPH, MODEL_PROPS = 7, 14
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 11, 12
NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE = 1, 2, 4
VALUE_INFO_NAME, VALUE_INFO_TYPE, TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE, SHAPE_DIM = 1, 2, 1, 1, 2, 1
DIM_VALUE, DIM_PARAM, TENSORPROTO_NAME = 1, 2, 8
ONNX_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 10: "float16"}


@dataclass
class OnnxGraph:
    props: dict
    output_op: str | None
    first_input: dict | None


def _text(data, span) -> str:
    return bytes(data[span[0] : span[1]]).decode()


def _fields(data, span, wanted: int) -> list:
    return [value for field, value in wire_fields(data, *span) if field == wanted]


def _value_info(data, span) -> dict:
    """A ValueInfoProto as {name, shape (ints, or None where symbolic), dtype}."""
    name = next((_text(data, v) for v in _fields(data, span, VALUE_INFO_NAME)), "")
    shape, dtype = [], "unknown"
    for type_span in _fields(data, span, VALUE_INFO_TYPE):
        for tensor in _fields(data, type_span, TYPE_TENSOR):
            dtype = next((ONNX_ELEM_TYPES.get(v, f"type {v}") for v in _fields(data, tensor, TENSOR_ELEM_TYPE)), dtype)
            for shape_span in _fields(data, tensor, TENSOR_SHAPE):
                for dim in _fields(data, shape_span, SHAPE_DIM):
                    shape.append(next(iter(_fields(data, dim, DIM_VALUE)), None))
    return {"name": name, "shape": shape, "dtype": dtype}


def read_onnx_graph(data) -> OnnxGraph:
    """An ONNX file's metadata_props, the op that makes its first output ("SOFTMAX", "LOG_SOFTMAX", "other", or
    None: a graph input) and its first input that is not an initializer, read at the protobuf wire level (a
    device has no ``onnx`` package; tensor data is skipped by its length)."""
    props, graph = {}, None
    for field, value in wire_fields(data, 0, len(data)):
        if field == MODEL_PROPS and isinstance(value, tuple):
            key, text = string_entry(data, value)
            props[key] = text
        elif field == MODEL_GRAPH and isinstance(value, tuple):
            graph = value
    if graph is None:
        return OnnxGraph(props, None, None)
    made_by, inputs, outputs, initializers = {}, [], [], set()
    for field, value in wire_fields(data, *graph):
        if not isinstance(value, tuple):
            continue
        if field == GRAPH_NODE:
            op_type = next((_text(data, v) for v in _fields(data, value, NODE_OP_TYPE)), "")
            node_inputs = [_text(data, v) for v in _fields(data, value, NODE_INPUT)]
            for name in _fields(data, value, NODE_OUTPUT):
                made_by[_text(data, name)] = (op_type, node_inputs)
        elif field == GRAPH_INITIALIZER:
            initializers.update(_text(data, v) for v in _fields(data, value, TENSORPROTO_NAME))
        elif field == GRAPH_INPUT:
            inputs.append(value)
        elif field == GRAPH_OUTPUT:
            outputs.append(value)
    first_input = next((i for i in map(lambda s: _value_info(data, s), inputs) if i["name"] not in initializers), None)
    name = _value_info(data, outputs[0])["name"] if outputs else None
    return OnnxGraph(props, _output_op(made_by, name), first_input)


def _output_op(made_by: dict, name: str | None) -> str | None:
    for _ in range(8):
        if name not in made_by:
            return None
        op_type, inputs = made_by[name]
        if op_type not in ONNX_PASS_THROUGH or not inputs:
            return {"Softmax": "SOFTMAX", "LogSoftmax": "LOG_SOFTMAX"}.get(op_type, "other")
        name = inputs[0]
    return "other"


# ---------------------------------------------------------------- the layers


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and all(isinstance(x, float) for x in a + b):
        return all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(a, b, strict=True))
    return a == b


def _show(field: str, value) -> str:
    if field == "labels":
        return f"{len(value)} names ({', '.join(value[:3])}{', ...' if len(value) > 3 else ''})"
    if isinstance(value, tuple):
        return ",".join(f"{v:.6g}" for v in value)
    return str(value)


def _three(values) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    return values * 3 if len(values) == 1 else values


def standard_layer(standard: dict | None, path: Path) -> dict:
    """The fields that standard TFLite metadata states: mean/std (given in 0..255 units), colour order, labels."""
    if not standard:
        return {}
    image, out = standard.get("input", {}), {}
    if image.get("mean") and image.get("std"):
        mean, std = image["mean"], image["std"]
        if len(mean) not in (1, 3) or len(std) not in (1, 3) or any(s <= 0 for s in std):
            raise MetadataError(
                f"{path}: its TFLite NormalizationOptions (mean {list(mean)}, std {list(std)}) are not 1 or 3 values "
                "with a positive std; say how with --mean, --std and --value-range 0-255"
            )
        out["mean"] = tuple(v / 255.0 for v in _three(mean))
        out["std"] = tuple(v / 255.0 for v in _three(std))
    if image.get("color_space") == "GRAYSCALE":
        raise MetadataError(f"{path}: its metadata says the input is grayscale; FloraEdge runs 3-channel models")
    if image.get("color_space") == "RGB":
        out["color_order"] = "RGB"
    if standard.get("labels"):
        out["labels"] = tuple(standard["labels"])
    return out


def info_layer(info: ModelInfo | None, path: Path) -> dict:
    """The fields of FloraEdge metadata (embedded or sidecar): the whole spec, labels, and output where declared."""
    if info is None:
        return {}
    out = {name: getattr(info.spec, name) for name in SPEC_FIELDS}
    if info.labels:
        out["labels"] = tuple(info.labels)
    if "output" in info.info:
        if info.info["output"] not in OUTPUT_KINDS:
            raise MetadataError(
                f"{path}: its metadata says the output is {info.info['output']!r}; FloraEdge reads {PROBABILITIES!r} "
                f"or {LOGITS!r} (re-export it with `floraedge export`, or pass --output)"
            )
        out["output"] = info.info["output"]
    return out


def spec_file_layer(path: Path) -> dict:
    """The fields a ``--spec`` file states (a partial spec is fine: the rest comes from elsewhere)."""
    with malformed(f"--spec {path}"):
        data = json.loads(read_text_bounded(path, what="spec file"))
    if not isinstance(data, dict):
        raise SpecError(f"--spec {path}: a preprocessing spec is a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPEC_FIELDS) - {"version"})
    if unknown:
        raise SpecError(f"--spec {path}: unknown fields {unknown}; a spec's fields are {list(SPEC_FIELDS)}")
    if data.get("version", SPEC_VERSION) != SPEC_VERSION:
        raise SpecError(
            f"--spec {path}: spec version {data['version']} is not supported (this runtime reads {SPEC_VERSION})"
        )
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in SPEC_FIELDS}


def flags_layer(o: ModelOverrides) -> dict:
    """The fields the individual options state; --mean/--std are in --value-range units."""
    out = {}
    for field, value in (
        ("crop_size", o.input_size),
        ("resize_size", o.resize_size),
        ("interpolation", o.interpolation),
        ("color_order", o.color_order),
        ("layout", o.layout),
        ("output", o.output),
    ):
        if value is not None:
            out[field] = value
    scale = VALUE_RANGES[o.value_range or "0-1"]
    if o.value_range is not None:  # the range alone means plain pixels in it: no normalization
        out["mean"], out["std"] = (0.0,) * 3, (1.0 / scale,) * 3
    if o.mean is not None:
        out["mean"] = tuple(v / scale for v in _three(o.mean))
    if o.std is not None:
        out["std"] = tuple(v / scale for v in _three(o.std))
    if o.labels is not None:
        labels = parse_labels(read_text_bounded(o.labels, what="labels file"))
        if not labels:
            raise MetadataError(f"--labels {o.labels} holds no label (one class name per line)")
        out["labels"] = labels
    return out


def input_geometry(shape) -> dict:
    """The input size and layout that a 4-D image input's fixed dimensions state."""
    dims = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape]
    if len(dims) != 4:
        return {}
    layouts = [name for name, c in (("NCHW", dims[1]), ("NHWC", dims[3])) if c == 3]
    out = {"layout": layouts[0]} if len(layouts) == 1 else {}
    if out:
        h, w = (dims[2], dims[3]) if out["layout"] == "NCHW" else (dims[1], dims[2])
        if h is not None and h == w:
            out["crop_size"] = h
    return out


def check_input_shape(path: Path, spec: PreprocessSpec, shape, sources: Mapping[str, str]) -> None:
    """Refuse a spec whose input size or layout disagrees with the model's input (it would fail at the first frame)."""
    want, got = spec.input_shape, tuple(shape)
    fixed = [(g, w) for g, w in zip(got[1:], want[1:], strict=False) if isinstance(g, (int, np.integer)) and g > 0]
    if len(got) != len(want) or any(g != w for g, w in fixed):
        where = ", ".join(f"{k} from {sources.get(k, DEFAULT)}" for k in ("crop_size", "layout"))
        raise MetadataError(
            f"{path}: the model takes input {list(got)} but the spec gives {list(want)} (crop_size {spec.crop_size}, "
            f"layout {spec.layout}; {where}): the spec does not match the model; fix --input-size/--layout/--spec "
            "or re-export it"
        )


# ---------------------------------------------------------------- the one resolution


def resolve_info(
    path: str | Path,
    overrides: ModelOverrides | None,
    num_outputs: int,
    input_details: Mapping,
    facts: FileFacts | None = None,
) -> ModelInfo:
    """The spec, labels and output kind the runtime uses for ``path``, with the source of each
    (``info.sources``) and what options changed (``info.notes``); see the module's docstring.

    ``num_outputs``: the model's scores per image (0: unknown until it runs). ``input_details``: its
    first input as a mapping with ``shape`` (and ``name``, ``dtype``), as TFLite's ``get_input_details()``
    gives it. ``facts``: what the file states (``read_facts(path)``, read here when not given).
    """
    path = Path(path)
    overrides = overrides or ModelOverrides()
    facts = facts if facts is not None else read_facts(path)
    sidecar = from_sidecar(path)
    geometry = input_geometry(input_details.get("shape", ()))
    detected = {"SOFTMAX": PROBABILITIES, "LOG_SOFTMAX": LOGITS}.get(facts.output_op or "")
    layers = [
        (MODEL, geometry | ({"output": detected} if detected else {})),
        (STANDARD, standard_layer(facts.standard, path)),
        (SIDECAR, info_layer(sidecar, path)),
        (EMBEDDED, info_layer(facts.embedded, path)),
        (FLAGS, spec_file_layer(overrides.spec) if overrides.spec else {}),
        (FLAGS, flags_layer(overrides)),
    ]
    values, sources, notes = {}, {}, []
    for source, layer in layers:
        for field, value in layer.items():
            if field in values and not _same(values[field], value) and source != sources[field]:
                notes.append(
                    f"{field}: {_show(field, value)} ({source}) replaces {_show(field, values[field])} ({sources[field]})"
                )
            values[field], sources[field] = value, source
    floraedge_made = facts.embedded is not None or sidecar is not None
    if "output" not in values and floraedge_made:  # FloraEdge files that do not say are older exports: logits
        values["output"], sources["output"] = LOGITS, sources.get("mean", EMBEDDED)
    refuse_incomplete(path, values, geometry)
    spec = build_spec(values, sources)
    check_input_shape(path, spec, input_details.get("shape", ()), sources)
    labels = values.get("labels", ())
    if num_outputs and labels and len(labels) != num_outputs:
        raise MetadataError(
            f"{path}: {len(labels)} labels but the model has {num_outputs} outputs (the labels come from "
            f"{sources['labels']}); give --labels with one class name per output"
        )
    if not labels:
        labels, sources["labels"] = tuple(f"class_{i}" for i in range(num_outputs)), DEFAULT
    info = dict((facts.embedded or sidecar).info) if floraedge_made else {}
    info["output"] = values["output"]
    return ModelInfo(spec, tuple(labels), info, sources=sources, notes=tuple(notes))


def refuse_incomplete(path: Path, values: dict, geometry: dict) -> None:
    """One line naming every missing piece and the options that give it (nothing is guessed)."""
    missing = []
    if "mean" not in values and "std" not in values:
        missing.append(f"its normalization ({OPTION_NAMES})")
    if "layout" not in values:
        missing.append("its input layout (--layout NCHW|NHWC: the input shape does not tell)")
    if "crop_size" not in values:
        missing.append("its input size (--input-size N: the input shape is not fixed and square)")
    if "output" not in values:
        missing.append("whether it outputs logits or probabilities (--output)")
    if not missing:
        return
    nothing = not values.keys() - geometry.keys() - {"output"}
    if nothing:
        raise MetadataError(
            f"{path} carries no preprocessing spec (no FloraEdge metadata, standard TFLite metadata, sidecar "
            f"{path.name}.json or spec.json): say how with {OPTION_NAMES}, --output logits|probabilities where the "
            f"file does not say, and --labels FILE (`floraedge inspect MODEL [options]` shows what the runtime then uses)"
        )
    raise MetadataError(f"{path} does not say {'; nor '.join(missing)}; `floraedge inspect` shows what it says")


def build_spec(values: dict, sources: dict) -> PreprocessSpec:
    """The spec from the stacked values; mean/std/resize/interpolation/colour order left unsaid take their defaults."""
    defaults = PreprocessSpec()
    crop = values["crop_size"]
    fills = {
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "resize_size": max(crop, round(crop / CROP_FRACTION)),
        "interpolation": defaults.interpolation,
        "color_order": defaults.color_order,
    }
    for field, value in fills.items():
        if field not in values:
            values[field], sources[field] = value, DEFAULT
    try:
        return PreprocessSpec(**{name: values[name] for name in SPEC_FIELDS})
    except (TypeError, ValueError) as exc:
        where = ", ".join(f"{name} from {sources[name]}" for name in SPEC_FIELDS)
        raise SpecError(f"{exc} ({where})") from exc
