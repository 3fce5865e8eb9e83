"""The one check every model file passes before any runtime opens it (``backends.load`` calls it).

A model file is input: a downloaded ``.onnx`` can name "external data" files that the runtime
then reads (``../../etc/passwd``, a symlink out of the folder, a FIFO that blocks the loader
forever), and a model path can itself be a FIFO or a device. So, for every backend alike:

- the model path, symlinks resolved, is a regular file of at most ``MAX_MODEL_BYTES``, and its sidecar
  metadata files (``<model>.json``, ``spec.json``, ``labels.txt``), where present, do not link out of its folder;
- an ONNX file's every tensor stored outside it (initializers, sparse initializers, tensors in
  node attributes, subgraphs, functions and training info) names a location that, symlinks
  resolved, is a regular file inside the model's own folder, and its offset and length lie
  within that file;
- an ncnn model is two files, the ``.param`` graph (text; its header is checked: ncnn's magic number, and
  layer and blob counts within ``MAX_NCNN_LAYERS``) and the ``.bin`` weights of the same name beside it,
  which, symlinks resolved, is a regular, non-empty file inside the model's folder, within ``max_bytes``.

The ONNX file is walked at the protobuf wire level: the device environment has no ``onnx``
package, and the walk reads no tensor data (each tensor's bytes are skipped by their length).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import FloraEdgeError

MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's and FlatBuffers' own limit for one file
MAX_NESTING = 64  # subgraphs inside subgraphs (If/Loop bodies); a deeper file is refused, not recursed into
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
NCNN_PARAM, NCNN_WEIGHTS = ".param", ".bin"
NCNN_MAGIC = b"7767517"  # the first line of every text .param file ncnn reads
MAX_NCNN_LAYERS = 100_000  # ncnn allocates per declared layer and blob; Lite0 has ~70, ResNet50 ~120


class ModelFileError(FloraEdgeError):
    """A model file that is not a regular file, too large, malformed, or names data outside its folder."""


@dataclass(frozen=True)
class ModelFile:
    path: Path  # symlinks resolved: what the runtime is given, so that it and this check see the same folder
    props: dict[str, str] = field(default_factory=dict)  # ONNX metadata_props (empty for other formats)


def check_model_file(path: str | Path, max_bytes: int = MAX_MODEL_BYTES) -> ModelFile:
    """``path`` resolved and checked (see the module's docstring); a ``ModelFileError`` says what is wrong."""
    given = Path(path)
    try:
        resolved = given.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ModelFileError(f"model file {given} does not exist ({exc})") from exc
    with open_regular(resolved, f"model file {given}") as data:
        if len(data) > max_bytes:
            raise ModelFileError(f"model file {given} is {len(data):,} bytes, over the {max_bytes:,}-byte limit")
        layout = onnx_layout(data, given) if resolved.suffix.lower() == ".onnx" else OnnxLayout()
        if resolved.suffix.lower() == NCNN_PARAM:
            check_ncnn_header(data, given)
    for tensor in layout.external:
        check_external(resolved.parent, tensor, given)
    for companion in model_files(resolved)[1:]:
        check_companion(resolved.parent, companion, given, max_bytes)
    for sidecar in sidecars(resolved):
        check_sidecar(resolved.parent, sidecar)
    return ModelFile(resolved, layout.props)


def model_files(path: str | Path) -> list[Path]:
    """The files a model is made of: the file itself, and for an ncnn ``.param`` graph its ``.bin`` weights."""
    path = Path(path)
    return [path, path.with_suffix(NCNN_WEIGHTS)] if path.suffix.lower() == NCNN_PARAM else [path]


def model_bytes(path: str | Path) -> int:
    """The size on disk of a model, all its files together (what a device downloads and stores)."""
    return sum(f.stat().st_size for f in model_files(path))


def check_ncnn_header(data: memoryview, model: Path) -> None:
    """A text ncnn ``.param``: the magic line, then ``<layer count> <blob count>`` within ``MAX_NCNN_LAYERS``."""
    head = bytes(data[:64]).split(b"\n")
    counts = head[1].split() if len(head) > 2 else []
    if head[0].strip() != NCNN_MAGIC or len(counts) != 2 or not all(c.isdigit() for c in counts):
        raise ModelFileError(
            f"{model} is not a text ncnn .param file (it must start with {NCNN_MAGIC.decode()} and a line "
            "'<layers> <blobs>'); re-export it with `floraedge export`"
        )
    layers, blobs = (int(c) for c in counts)
    if not (0 < layers <= MAX_NCNN_LAYERS and 0 < blobs <= MAX_NCNN_LAYERS):
        raise ModelFileError(
            f"{model} declares {layers:,} layers and {blobs:,} blobs; FloraEdge reads 1 to {MAX_NCNN_LAYERS:,} of each"
        )


def check_companion(folder: Path, path: Path, model: Path, max_bytes: int) -> None:
    """A file the model is read with (an ncnn model's ``.bin``): present, a regular non-empty file within
    ``max_bytes``, and, symlinks resolved, inside the model's folder."""
    if not os.path.lexists(path):
        raise ModelFileError(f"{model} needs its weights {path.name} beside it in {folder}: copy both files")
    if not path.resolve().is_relative_to(folder):
        raise ModelFileError(f"{path} links out of the model's folder {folder}: refused; put the file itself there")
    with open_regular(path, f"{model}'s weights {path.name}") as data:
        if len(data) > max_bytes:
            raise ModelFileError(f"{path} is {len(data):,} bytes, over the {max_bytes:,}-byte limit")


def sidecars(model: Path) -> list[Path]:
    """The files ``edge_runtime.metadata.from_sidecar`` may read for ``model``, where they exist."""
    names = (model.name + ".json", "spec.json", "labels.txt")
    return [model.parent / name for name in names if os.path.lexists(model.parent / name)]


def check_sidecar(folder: Path, path: Path) -> None:
    """A sidecar's labels are served (``GET /v1/model``): a link out of the folder could publish any file."""
    if not path.resolve().is_relative_to(folder):
        raise ModelFileError(f"{path} links out of the model's folder {folder}: refused; put the file itself there")


@contextlib.contextmanager
def open_regular(path: Path, what: str) -> Iterator[memoryview]:
    """The bytes of a regular, non-empty file (mapped, not read); a FIFO or device is refused without blocking."""
    try:  # O_NONBLOCK: a FIFO with no writer would block a plain open() forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ModelFileError(f"{what}: cannot open ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(f"{what} is not a regular file (a FIFO, device or folder)")
        if info.st_size == 0:
            raise ModelFileError(f"{what} is empty")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                yield view
            finally:
                view.release()
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ExternalTensor:
    name: str
    location: str
    offset: int
    length: int | None


@dataclass
class OnnxLayout:
    props: dict[str, str] = field(default_factory=dict)
    external: list[ExternalTensor] = field(default_factory=list)


# The protobuf fields that can hold a tensor or metadata: message -> {field number: message kind}
# (onnx.proto: ModelProto, GraphProto, NodeProto, AttributeProto, SparseTensorProto, FunctionProto,
# TrainingInfoProto); every other field is skipped by its length.
SUBMESSAGES = {
    "model": {7: "graph", 14: "entry", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14


def onnx_layout(data: memoryview | bytes, name: Path | str = "model") -> OnnxLayout:
    """The metadata_props and the externally stored tensors of a serialized ONNX ModelProto."""
    layout = OnnxLayout()
    try:
        walk(data, (0, len(data)), "model", layout, 0)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{name} is not a readable ONNX file ({exc}); re-export it with `floraedge export`"
        ) from exc
    return layout


def walk(data, span: tuple[int, int], kind: str, layout: OnnxLayout, depth: int) -> None:
    if depth > MAX_NESTING:
        raise ValueError(f"subgraphs nested over {MAX_NESTING} deep")
    if kind == "tensor":
        tensor = external_tensor(data, span)
        if tensor:
            layout.external.append(tensor)
        return
    children = SUBMESSAGES.get(kind, {})
    for number, value in wire_fields(data, *span):
        child = children.get(number)
        if child is None:
            continue
        if not isinstance(value, tuple):
            raise ValueError(f"field {number} of a {kind} is not a message")
        if child == "entry":  # the model's metadata_props
            key, text = string_entry(data, value)
            layout.props[key] = text
        else:
            walk(data, value, child, layout, depth + 1)


def external_tensor(data, span: tuple[int, int]) -> ExternalTensor | None:
    """The tensor's external-data record, or None when its data is inside the file."""
    name, location_kind, entries = "", 0, {}
    for number, value in wire_fields(data, *span):
        if number == TENSOR_NAME and isinstance(value, tuple):
            name = bytes(data[value[0] : value[1]]).decode()
        elif number == TENSOR_DATA_LOCATION and isinstance(value, int):
            location_kind = value
        elif number == TENSOR_EXTERNAL_DATA and isinstance(value, tuple):
            key, text = string_entry(data, value)
            entries[key] = text
    if location_kind != EXTERNAL and not entries:
        return None
    if "location" not in entries:
        raise ValueError(f"tensor {name!r} is stored externally but names no location")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ValueError(f"tensor {name!r} has a non-integer external offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"tensor {name!r} has a negative external offset or length")
    return ExternalTensor(name, entries["location"], offset, length)


def string_entry(data, span: tuple[int, int]) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    out = {1: "", 2: ""}
    for number, value in wire_fields(data, *span):
        if number in out and isinstance(value, tuple):
            out[number] = bytes(data[value[0] : value[1]]).decode()
    return out[1], out[2]


def check_external(folder: Path, tensor: ExternalTensor, model: Path) -> None:
    """Refuse external data that leaves ``folder`` (by path or symlink), is not a regular file, or is too short."""
    where = f"{model}: tensor {tensor.name!r} stores its data in {tensor.location!r}"
    if not tensor.location or "\0" in tensor.location or os.path.isabs(tensor.location):
        raise ModelFileError(f"{where}: an external data location must be a file name relative to the model's folder")
    target = (folder / tensor.location).resolve()
    if not target.is_relative_to(folder):
        raise ModelFileError(
            f"{where}, outside the model's folder {folder}: refused (a model may read only its own files)"
        )
    with open_regular(target, f"{where}; that file") as data:
        size = len(data)
    end = tensor.offset + (tensor.length or 0)
    if end > size or tensor.offset > size:
        raise ModelFileError(f"{where} at bytes {tensor.offset}-{end}, past the end of that {size:,}-byte file")


def wire_fields(data, start: int, end: int) -> Iterator[tuple[int, int | tuple[int, int]]]:
    """(field number, value) of each field of the message in ``data[start:end]``: an int for varint and
    fixed-width fields, a (start, end) span for length-delimited ones."""
    i = start
    while i < end:
        key, i = varint(data, i, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {i}")
        if wire_type == 0:
            value, i = varint(data, i, end)
        elif wire_type == 1 or wire_type == 5:
            width = 8 if wire_type == 1 else 4
            if i + width > end:
                raise ValueError(f"truncated at byte {i}")
            value, i = int.from_bytes(data[i : i + width], "little"), i + width
        elif wire_type == 2:
            length, i = varint(data, i, end)
            if i + length > end:
                raise ValueError(f"a field of {length:,} bytes at byte {i} runs past the end (truncated file?)")
            value, i = (i, i + length), i + length
        else:
            raise ValueError(f"unknown wire type {wire_type} at byte {i}")
        yield number, value


def varint(data, i: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError(f"truncated or overlong varint at byte {i}")
        byte = data[i]
        result |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return result, i
