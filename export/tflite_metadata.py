"""Standard TFLite image-classifier metadata, written without tflite-support or MediaPipe.

Mobile loaders (MediaPipe's ImageClassifier, the TFLite Task Library) read how to normalize the
input and what the output classes are called from the model file itself:

* a ``ModelMetadata`` flatbuffer (schema ``metadata_schema.fbs``, file identifier ``M001``) stored
  as one of the model's buffers and named by a ``metadata`` entry ``TFLITE_METADATA``;
* a zip appended after the model flatbuffer, holding ``labels.txt`` (one label per output index)
  and any extra files (ours: ``floraedge.json``, which the edge runtime reads). The entries are
  STORED, not deflated, because loaders read them in place.

The model flatbuffer is rewritten with the TFLite schema classes that ai-edge-litert ships. The
metadata tables are few and small, so they are written with the plain ``flatbuffers.Builder``,
one function per table, using the field slots of ``metadata_schema.fbs`` (a field's slot is its
position in the table; a union takes two slots, its type then its value). The slots and the reader
are the runtime's (``edge_runtime.tflite_metadata``), which runs such files with no option.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.tflite_metadata import (  # the schema's slots and enums, shared with the runtime's reader
    ASSOCIATED_FILE,
    COLOR_SPACE_RGB,
    CONTENT,
    CONTENT_FEATURE_PROPERTIES,
    CONTENT_IMAGE_PROPERTIES,
    FILE_TYPE_TENSOR_AXIS_LABELS,
    IMAGE_PROPERTIES,
    METADATA_IDENTIFIER,
    METADATA_NAME,
    MODEL_IDENTIFIER,
    MODEL_METADATA,
    NORMALIZATION_OPTIONS,
    PROCESS_UNIT,
    PROCESS_UNIT_NORMALIZATION,
    STATS,
    SUBGRAPH_METADATA,
    TENSOR_METADATA,
    read_metadata,  # noqa: F401  (re-exported: the reader is the runtime's, torch-free)
)

MIN_PARSER_VERSION = "1.0.0"  # every field written here exists since metadata schema 1.0.0
LABELS_FILE = "labels.txt"
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that two exports of one model are byte-identical
BUFFER_ALIGNMENT = 16  # what TFLite's own converter guarantees for constant data

_TFLITE_DTYPES = {tfl.TensorType.FLOAT32: "float32", tfl.TensorType.UINT8: "uint8", tfl.TensorType.INT8: "int8"}
_INTEGER_RANGES = {"uint8": (0.0, 255.0), "int8": (-128.0, 127.0)}


# ---------------------------------------------------------------- writing the metadata tables


def _slots(fields: dict[str, int]) -> int:
    return max(fields.values()) + 1


def _float_vector(b: flatbuffers.Builder, values: Sequence[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _table_vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _associated_file(b: flatbuffers.Builder, name: str, description: str, file_type: int) -> int:
    name_off, description_off = b.CreateString(name), b.CreateString(description)
    b.StartObject(_slots(ASSOCIATED_FILE))
    b.PrependUOffsetTRelativeSlot(ASSOCIATED_FILE["name"], name_off, 0)
    b.PrependUOffsetTRelativeSlot(ASSOCIATED_FILE["description"], description_off, 0)
    b.PrependInt8Slot(ASSOCIATED_FILE["type"], file_type, 0)
    return b.EndObject()


def _feature_properties(b: flatbuffers.Builder) -> int:
    b.StartObject(0)  # an empty table: its presence says "a plain feature tensor"
    return b.EndObject()


def _image_properties(b: flatbuffers.Builder, color_space: int) -> int:
    b.StartObject(_slots(IMAGE_PROPERTIES))
    b.PrependInt8Slot(IMAGE_PROPERTIES["color_space"], color_space, 0)
    return b.EndObject()


def _content(b: flatbuffers.Builder, properties_type: int, properties: int) -> int:
    b.StartObject(_slots(CONTENT))
    b.PrependUint8Slot(CONTENT["content_properties_type"], properties_type, 0)
    b.PrependUOffsetTRelativeSlot(CONTENT["content_properties"], properties, 0)
    return b.EndObject()


def _normalization_options(b: flatbuffers.Builder, mean, std) -> int:
    mean_off, std_off = _float_vector(b, mean), _float_vector(b, std)
    b.StartObject(_slots(NORMALIZATION_OPTIONS))
    b.PrependUOffsetTRelativeSlot(NORMALIZATION_OPTIONS["mean"], mean_off, 0)
    b.PrependUOffsetTRelativeSlot(NORMALIZATION_OPTIONS["std"], std_off, 0)
    return b.EndObject()


def _process_unit(b: flatbuffers.Builder, options_type: int, options: int) -> int:
    b.StartObject(_slots(PROCESS_UNIT))
    b.PrependUint8Slot(PROCESS_UNIT["options_type"], options_type, 0)
    b.PrependUOffsetTRelativeSlot(PROCESS_UNIT["options"], options, 0)
    return b.EndObject()


def _stats(b: flatbuffers.Builder, minimum, maximum) -> int:
    max_off, min_off = _float_vector(b, maximum), _float_vector(b, minimum)
    b.StartObject(_slots(STATS))
    b.PrependUOffsetTRelativeSlot(STATS["max"], max_off, 0)
    b.PrependUOffsetTRelativeSlot(STATS["min"], min_off, 0)
    return b.EndObject()


def _tensor_metadata(
    b: flatbuffers.Builder,
    name: str,
    description: str,
    content: int,
    *,
    process_units: Sequence[int] = (),
    stats: int | None = None,
    associated_files: Sequence[int] = (),
) -> int:
    name_off, description_off = b.CreateString(name), b.CreateString(description)
    units_off = _table_vector(b, list(process_units)) if process_units else None
    files_off = _table_vector(b, list(associated_files)) if associated_files else None
    b.StartObject(_slots(TENSOR_METADATA))
    b.PrependUOffsetTRelativeSlot(TENSOR_METADATA["name"], name_off, 0)
    b.PrependUOffsetTRelativeSlot(TENSOR_METADATA["description"], description_off, 0)
    b.PrependUOffsetTRelativeSlot(TENSOR_METADATA["content"], content, 0)
    if units_off is not None:
        b.PrependUOffsetTRelativeSlot(TENSOR_METADATA["process_units"], units_off, 0)
    if stats is not None:
        b.PrependUOffsetTRelativeSlot(TENSOR_METADATA["stats"], stats, 0)
    if files_off is not None:
        b.PrependUOffsetTRelativeSlot(TENSOR_METADATA["associated_files"], files_off, 0)
    return b.EndObject()


def _subgraph_metadata(b: flatbuffers.Builder, inputs: list[int], outputs: list[int]) -> int:
    inputs_off, outputs_off = _table_vector(b, inputs), _table_vector(b, outputs)
    b.StartObject(_slots(SUBGRAPH_METADATA))
    b.PrependUOffsetTRelativeSlot(SUBGRAPH_METADATA["input_tensor_metadata"], inputs_off, 0)
    b.PrependUOffsetTRelativeSlot(SUBGRAPH_METADATA["output_tensor_metadata"], outputs_off, 0)
    return b.EndObject()


def _model_metadata(b: flatbuffers.Builder, name: str, description: str, version: str, subgraph: int) -> int:
    name_off, description_off, version_off = b.CreateString(name), b.CreateString(description), b.CreateString(version)
    subgraphs_off = _table_vector(b, [subgraph])
    parser_off = b.CreateString(MIN_PARSER_VERSION)
    b.StartObject(_slots(MODEL_METADATA))
    b.PrependUOffsetTRelativeSlot(MODEL_METADATA["name"], name_off, 0)
    b.PrependUOffsetTRelativeSlot(MODEL_METADATA["description"], description_off, 0)
    b.PrependUOffsetTRelativeSlot(MODEL_METADATA["version"], version_off, 0)
    b.PrependUOffsetTRelativeSlot(MODEL_METADATA["subgraph_metadata"], subgraphs_off, 0)
    b.PrependUOffsetTRelativeSlot(MODEL_METADATA["min_parser_version"], parser_off, 0)
    return b.EndObject()


def build_metadata(
    *,
    name: str,
    description: str,
    version: str,
    mean,
    std,
    input_dtype: str,
    input_size: tuple[int, int],
    num_classes: int,
    output_description: str = "",
) -> bytes:
    """The ``ModelMetadata`` flatbuffer of a one-input, one-output image classifier."""
    if input_dtype in _INTEGER_RANGES:  # stats describe the tensor's values: the raw quantized range
        low, high = _INTEGER_RANGES[input_dtype]
        minimum, maximum = [low] * 3, [high] * 3
    else:  # what 0 and 255 become after normalization
        minimum = [(0.0 - m) / s for m, s in zip(mean, std, strict=True)]
        maximum = [(255.0 - m) / s for m, s in zip(mean, std, strict=True)]
    h, w = input_size
    mean_text = ", ".join(f"{v:g}" for v in mean)
    std_text = ", ".join(f"{v:g}" for v in std)

    b = flatbuffers.Builder(1024)
    image = _tensor_metadata(
        b,
        INPUT_NAME,
        f"Input image: RGB, {w}x{h}, pixel values 0..255 normalized as (x - [{mean_text}]) / [{std_text}].",
        _content(b, CONTENT_IMAGE_PROPERTIES, _image_properties(b, COLOR_SPACE_RGB)),
        process_units=[_process_unit(b, PROCESS_UNIT_NORMALIZATION, _normalization_options(b, mean, std))],
        stats=_stats(b, minimum, maximum),
    )
    labels = _associated_file(b, LABELS_FILE, "Class names, one per output index.", FILE_TYPE_TENSOR_AXIS_LABELS)
    probability = _tensor_metadata(
        b,
        OUTPUT_NAME,
        output_description or f"Scores of the {num_classes} classes.",
        _content(b, CONTENT_FEATURE_PROPERTIES, _feature_properties(b)),
        associated_files=[labels],
    )
    root = _model_metadata(b, name, description, version, _subgraph_metadata(b, [image], [probability]))
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


# ---------------------------------------------------------------- rewriting the model flatbuffer


class _AlignedBuffer(tfl.BufferT):
    """A ``BufferT`` whose data is packed inline at a 16-byte boundary (the generated Pack aligns to 1)."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # the generated classes' method name
        data_off = None
        if self.data is not None:
            raw = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data_off = builder.EndVector()
        tfl.BufferStart(builder)
        if data_off is not None:
            tfl.BufferAddData(builder, data_off)
        return tfl.BufferEnd(builder)


def _read_model(raw: bytes) -> tfl.ModelT:
    if len(raw) < 8 or not tfl.Model.ModelBufferHasIdentifier(raw, 0):
        raise ValueError("not a TFLite model (no 'TFL3' flatbuffer identifier)")
    return tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(raw, 0))


def _outside(raw: bytes, offset: int, size: int, what: str) -> np.ndarray:
    if offset + size > len(raw):
        raise ValueError(f"{what} lies outside the file (offset {offset}, size {size}, file {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=offset)


def _inline_all_data(model: tfl.ModelT, raw: bytes) -> None:
    """Pull data kept after the flatbuffer (absolute offsets > 1) back inline, as aligned buffers.

    ai-edge-quantizer writes the weights of all but tiny models that way; a repack that kept
    the offsets would point them at the wrong bytes once the flatbuffer changes size.
    """
    if model.externalBuffers or model.externalBufferGroups:
        raise ValueError("the model keeps weights in separate files (external buffer groups); not supported")
    buffers = []
    for i, buffer in enumerate(model.buffers or []):
        data = None if buffer is None else buffer.data
        if buffer is not None and buffer.offset > 1:
            data = _outside(raw, buffer.offset, buffer.size, f"buffer {i}")
        buffers.append(_AlignedBuffer(data=data if data is not None and len(data) else None))
    model.buffers = buffers
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            if op.largeCustomOptionsOffset > 1:
                op.customOptions = _outside(
                    raw, op.largeCustomOptionsOffset, op.largeCustomOptionsSize, "custom options"
                )
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0


def _set_metadata_buffer(model: tfl.ModelT, data: bytes) -> None:
    """Store ``data`` as the TFLITE_METADATA buffer (replacing an earlier one in place)."""
    payload = np.frombuffer(data, dtype=np.uint8)
    for entry in model.metadata or []:
        if entry.name is not None and entry.name.decode() == METADATA_NAME:
            model.buffers[entry.buffer] = _AlignedBuffer(data=payload)
            return
    model.buffers.append(_AlignedBuffer(data=payload))
    entry = tfl.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]


def _pack(model: tfl.ModelT, size_hint: int) -> bytes:
    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    return bytes(builder.Output())


def _with_zip(flatbuffer: bytes, files: dict[str, bytes]) -> bytes:
    """``flatbuffer`` followed by a stored zip of ``files``; member offsets count from the file's start."""
    out = io.BytesIO()
    out.write(flatbuffer)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, whatever the build machine
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return out.getvalue()


def _check_labels(labels: list[str], num_classes: int) -> None:
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels but the model has {num_classes} outputs; they must be equal")
    bad = [label for label in labels if not label or label != label.strip() or "\n" in label or "\r" in label]
    if bad:
        raise ValueError(f"labels must be non-empty single lines without surrounding spaces, got {bad[:3]}")


def _check_normalization(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B), got {mean} and {std}")
    if any(not s > 0 for s in std):
        raise ValueError(f"std values must be positive, got {std}")
    return mean, std


def _zip_files(labels: list[str], extra_files: dict[str, bytes]) -> dict[str, bytes]:
    """labels.txt and the extra files, the zip appended to the model."""
    files = {LABELS_FILE: ("\n".join(labels) + "\n").encode()}
    for file_name, data in extra_files.items():
        if file_name in files:
            raise ValueError(f"extra file {file_name!r} would replace the generated one")
        files[file_name] = bytes(data)
    return files


def _classifier_input(model_path: Path, model, labels: list[str]):
    """The model's one input tensor, refused unless the model is an image classifier with ``len(labels)`` outputs."""
    if not model.subgraphs:
        raise ValueError(f"{model_path}: the model has no subgraph")
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(
            f"{model_path}: an image classifier has one input and one output, got {len(graph.inputs)} and {len(graph.outputs)}"
        )
    image, scores = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    shape = [int(d) for d in image.shape]
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"{model_path}: image metadata needs an NHWC input with 3 channels, got shape {shape}")
    if image.type not in _TFLITE_DTYPES:
        raise ValueError(f"{model_path}: input type {image.type} is not float32, uint8 or int8")
    _check_labels(labels, int(scores.shape[-1]))
    return image


def add_metadata(
    model_path: Path,
    out_path: Path,
    *,
    labels: list[str],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    name: str,
    description: str,
    extra_files: dict[str, bytes] | None = None,
    version: str = "",
    output_description: str = "",
) -> Path:
    """Write ``model_path`` with standard image-classifier metadata to ``out_path``.

    ``mean``/``std`` are in 0..255 pixel units, as mobile loaders apply them: ``(x - mean) / std``
    on 0..255 RGB input (EfficientNet-Lite: 127.5 and 127.5). ``labels`` name the output indices
    and become ``labels.txt``; ``extra_files`` are added to the same stored zip. ``output_description``
    says what the scores are (loaders report them as given; a softmax in the graph makes them
    probabilities). The model needs
    one NHWC RGB input and one output of ``len(labels)`` classes. Any TFLITE_METADATA already in
    the model is replaced; the graph and weights are unchanged. Returns ``out_path``.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    mean, std = _check_normalization(mean, std)
    files = _zip_files(labels, extra_files or {})
    raw = model_path.read_bytes()
    model = _read_model(raw)
    image = _classifier_input(model_path, model, labels)
    shape = [int(d) for d in image.shape]
    _inline_all_data(model, raw)
    metadata = build_metadata(
        name=name,
        description=description,
        version=version,
        mean=mean,
        std=std,
        input_dtype=_TFLITE_DTYPES[image.type],
        input_size=(shape[1], shape[2]),
        num_classes=len(labels),
        output_description=output_description,
    )
    _set_metadata_buffer(model, metadata)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_path, _with_zip(_pack(model, len(raw)), files))
    return out_path
