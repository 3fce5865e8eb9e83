"""Reading what a ``.tflite`` file says about itself, torch-free and with ``flatbuffers`` alone.

Two things are read here, for the runtime (``edge_runtime.foreign``) and for the export's tests:

* the standard image-classifier metadata that MediaPipe Model Maker and the TFLite Support writers
  produce (and ``export.tflite_metadata`` writes): a ``ModelMetadata`` flatbuffer (schema
  ``metadata_schema.fbs``, identifier ``M001``) in the buffer that the model's ``metadata`` entry
  ``TFLITE_METADATA`` names, with the labels in a ``TENSOR_AXIS_LABELS`` file of the zip appended to
  the model;
* the operator that produces the model's output (a ``SOFTMAX`` there means probabilities).

Why not the generated schema classes: the TFLite schema's (``ai_edge_litert.schema_py_generated``) are
absent where a device runs ``tflite_runtime``, and the metadata schema's are on PyPI only inside the
mediapipe and tflite-support wheels. The few tables needed are read by field slot with flatbuffers'
``Table`` API (a field's slot is its position in the ``.fbs`` table; a union takes two slots).
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

from edge_runtime.bounded import open_zip, read_member
from edge_runtime.metadata import MEMBER_MAX_BYTES, MEMBERS_MAX

METADATA_NAME = "TFLITE_METADATA"
MODEL_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"

# Enum values and union tags from metadata_schema.fbs.
COLOR_SPACE_RGB = 1
COLOR_SPACE_GRAYSCALE = 2
FILE_TYPE_TENSOR_AXIS_LABELS = 2
CONTENT_FEATURE_PROPERTIES = 1
CONTENT_IMAGE_PROPERTIES = 2
PROCESS_UNIT_NORMALIZATION = 1

# Field slots of the metadata tables (metadata_schema.fbs declaration order).
ASSOCIATED_FILE = {"name": 0, "description": 1, "type": 2}
IMAGE_PROPERTIES = {"color_space": 0}
CONTENT = {"content_properties_type": 0, "content_properties": 1}
NORMALIZATION_OPTIONS = {"mean": 0, "std": 1}
PROCESS_UNIT = {"options_type": 0, "options": 1}
STATS = {"max": 0, "min": 1}
TENSOR_METADATA = {"name": 0, "description": 1, "content": 3, "process_units": 4, "stats": 5, "associated_files": 6}
SUBGRAPH_METADATA = {"name": 0, "description": 1, "input_tensor_metadata": 2, "output_tensor_metadata": 3}
MODEL_METADATA = {"name": 0, "description": 1, "version": 2, "subgraph_metadata": 3, "min_parser_version": 7}

# Field slots of the model's own tables (TFLite schema.fbs).
MODEL = {"operator_codes": 1, "subgraphs": 2, "buffers": 4, "metadata": 6}
METADATA_ENTRY = {"name": 0, "buffer": 1}
BUFFER = {"data": 0, "offset": 1, "size": 2}
SUBGRAPH = {"outputs": 2, "operators": 3}
OPERATOR = {"opcode_index": 0, "inputs": 1, "outputs": 2}
OPERATOR_CODE = {"deprecated_builtin_code": 0, "builtin_code": 3}
SOFTMAX, LOG_SOFTMAX = 25, 50
# Operators that pass scores through unchanged in meaning: looked through to find the one that made them.
PASS_THROUGH = {6: "DEQUANTIZE", 114: "QUANTIZE", 22: "RESHAPE", 43: "SQUEEZE", 39: "CAST"}
PASS_THROUGH_MAX = 8


class _Fields:
    """One flatbuffer table, read through flatbuffers' Table API by field slot."""

    def __init__(self, buf, pos: int, slots: dict[str, int]):
        from flatbuffers.table import Table

        self.tab, self.slots = Table(buf, pos), slots

    def _offset(self, field: str) -> int:
        return self.tab.Offset(4 + 2 * self.slots[field])  # vtable entries follow its two uint16 sizes

    def string(self, field: str) -> str | None:
        o = self._offset(field)
        return self.tab.String(o + self.tab.Pos).decode() if o else None

    def scalar(self, field: str, kind: str = "Int8Flags") -> int:
        from flatbuffers import number_types

        o = self._offset(field)
        return self.tab.Get(getattr(number_types, kind), o + self.tab.Pos) if o else 0

    def byte(self, field: str) -> int:
        return self.scalar(field, "Int8Flags")

    def numbers(self, field: str, kind: str = "Float32Flags") -> tuple:
        from flatbuffers import number_types

        o = self._offset(field)
        if not o:
            return ()
        return tuple(self.tab.GetVectorAsNumpy(getattr(number_types, kind), o).tolist())

    def floats(self, field: str) -> tuple[float, ...]:
        return self.numbers(field, "Float32Flags")

    def table(self, field: str, slots: dict[str, int]) -> _Fields | None:
        o = self._offset(field)
        return _Fields(self.tab.Bytes, self.tab.Indirect(o + self.tab.Pos), slots) if o else None

    def tables(self, field: str, slots: dict[str, int]) -> list[_Fields]:
        o = self._offset(field)
        if not o:
            return []
        start = self.tab.Vector(o)
        return [_Fields(self.tab.Bytes, self.tab.Indirect(start + 4 * i), slots) for i in range(self.tab.VectorLen(o))]


def _root(buf, slots: dict[str, int], identifier: bytes, what: str) -> _Fields:
    from flatbuffers import encode, packer, util

    if len(buf) < 8 or not util.BufferHasIdentifier(buf, 0, identifier):
        raise ValueError(f"{what} has no {identifier.decode()!r} flatbuffer identifier")
    return _Fields(buf, encode.Get(packer.uoffset, buf, 0), slots)


def _metadata_bytes(raw, model: _Fields) -> bytes | None:
    """The TFLITE_METADATA buffer's bytes, or None when the model has no such entry."""
    for entry in model.tables("metadata", METADATA_ENTRY):
        if entry.string("name") != METADATA_NAME:
            continue
        buffers = model.tables("buffers", BUFFER)
        index = entry.scalar("buffer", "Uint32Flags")
        if index >= len(buffers):
            raise ValueError(f"the {METADATA_NAME} entry names buffer {index} of {len(buffers)}")
        buffer = buffers[index]
        offset, size = buffer.scalar("offset", "Uint64Flags"), buffer.scalar("size", "Uint64Flags")
        if offset > 1:  # kept after the flatbuffer (ai-edge-quantizer's files)
            if offset + size > len(raw):
                raise ValueError(f"the {METADATA_NAME} buffer lies outside the file")
            return bytes(raw[offset : offset + size])
        return bytes(buffer.numbers("data", "Uint8Flags"))
    return None


def _read_tensor(t: _Fields) -> dict:
    out = {"name": t.string("name"), "description": t.string("description")}
    content = t.table("content", CONTENT)
    if content is not None and content.byte("content_properties_type") == CONTENT_IMAGE_PROPERTIES:
        image = content.table("content_properties", IMAGE_PROPERTIES)
        space = image.byte("color_space") if image is not None else 0
        out["color_space"] = {COLOR_SPACE_RGB: "RGB", COLOR_SPACE_GRAYSCALE: "GRAYSCALE"}.get(space, "UNKNOWN")
    for unit in t.tables("process_units", PROCESS_UNIT):
        if unit.byte("options_type") == PROCESS_UNIT_NORMALIZATION:
            options = unit.table("options", NORMALIZATION_OPTIONS)
            out["mean"], out["std"] = options.floats("mean"), options.floats("std")
    stats = t.table("stats", STATS)
    if stats is not None:
        out["min"], out["max"] = stats.floats("min"), stats.floats("max")
    label_files = [
        f.string("name")
        for f in t.tables("associated_files", ASSOCIATED_FILE)
        if f.byte("type") == FILE_TYPE_TENSOR_AXIS_LABELS
    ]
    if label_files:
        out["label_file"] = label_files[0]
    return out


def _labels(raw, label_file: str | None, where: str) -> tuple[list[str], list[str]]:
    """(the appended zip's member names, the lines of ``label_file`` among them)."""
    stream = io.BytesIO(raw)
    if not zipfile.is_zipfile(stream):
        return [], []
    with open_zip(stream, MEMBERS_MAX) as z:
        names = z.namelist()
        if label_file not in names:
            return names, []
        text = read_member(z, label_file, MEMBER_MAX_BYTES, where).decode()
        return names, [line.strip() for line in text.splitlines() if line.strip()]


def parse_metadata(raw, where: str = "model") -> dict | None:
    """The image-classifier metadata of the ``.tflite`` bytes ``raw``, or None when it has no TFLITE_METADATA.

    Returns ``name``, ``description``, ``version``, ``min_parser_version``, ``input`` and ``output`` (dicts
    with the tensor ``name``; the input's ``color_space``, ``mean``, ``std`` (0..255 units), ``min``, ``max``;
    the output's ``label_file``), ``files`` (the appended zip's members) and ``labels``. A malformed file
    raises ``ValueError``.
    """
    try:
        model = _root(raw, MODEL, MODEL_IDENTIFIER, where)
        data = _metadata_bytes(raw, model)
        if data is None:
            return None
        root = _root(data, MODEL_METADATA, METADATA_IDENTIFIER, f"{where}'s {METADATA_NAME} buffer")
        subgraphs = root.tables("subgraph_metadata", SUBGRAPH_METADATA)
        inputs = [_read_tensor(t) for t in subgraphs[0].tables("input_tensor_metadata", TENSOR_METADATA)]
        outputs = [_read_tensor(t) for t in subgraphs[0].tables("output_tensor_metadata", TENSOR_METADATA)]
    except (IndexError, struct.error, UnicodeDecodeError) as exc:  # offsets that point past the buffer
        raise ValueError(f"{where}: malformed TFLite metadata ({type(exc).__name__}: {exc})") from exc
    if not subgraphs:
        raise ValueError(f"{where}: the metadata describes no subgraph")
    result = {
        "name": root.string("name"),
        "description": root.string("description"),
        "version": root.string("version") or "",
        "min_parser_version": root.string("min_parser_version"),
        "input": inputs[0] if inputs else {},
        "output": outputs[0] if outputs else {},
    }
    result["files"], result["labels"] = _labels(raw, result["output"].get("label_file"), where)
    return result


def read_metadata(path: str | Path) -> dict:
    """``parse_metadata`` of a file; a file without TFLITE_METADATA raises ``ValueError``."""
    result = parse_metadata(Path(path).read_bytes(), str(path))
    if result is None:
        raise ValueError(f"{path}: the model has no {METADATA_NAME} metadata")
    return result


def output_operator(raw, where: str = "model") -> str | None:
    """The builtin operator that makes the first output of the first subgraph, looking through
    (de)quantize and reshape operators: ``"SOFTMAX"``, ``"LOG_SOFTMAX"``, ``"other"``, or None (a graph input)."""
    try:
        model = _root(raw, MODEL, MODEL_IDENTIFIER, where)
        codes = model.tables("operator_codes", OPERATOR_CODE)
        graph = model.tables("subgraphs", SUBGRAPH)[0]
        operators = graph.tables("operators", OPERATOR)
        made_by = {}
        for op in operators:
            for tensor in op.numbers("outputs", "Int32Flags"):
                made_by[tensor] = op
        tensor = graph.numbers("outputs", "Int32Flags")[0]
        for _ in range(PASS_THROUGH_MAX):
            op = made_by.get(tensor)
            if op is None:
                return None
            code = codes[op.scalar("opcode_index", "Uint32Flags")]
            builtin = max(code.byte("deprecated_builtin_code"), code.scalar("builtin_code", "Int32Flags"))
            if builtin not in PASS_THROUGH:
                return {SOFTMAX: "SOFTMAX", LOG_SOFTMAX: "LOG_SOFTMAX"}.get(builtin, "other")
            tensor = op.numbers("inputs", "Int32Flags")[0]
    except (IndexError, struct.error, UnicodeDecodeError, KeyError) as exc:
        raise ValueError(f"{where}: malformed TFLite model ({type(exc).__name__}: {exc})") from exc
    return "other"
