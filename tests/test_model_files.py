"""Hostile model files, on every backend: one loading check refuses them before any runtime reads them,
and a runtime's failure while running a model is one ``InferenceError`` line, never a traceback.

The cases, as an attacker would hand them over: a truncated file, ONNX external data that points
out of the model's folder (a relative path, an absolute one, a symlink), external data or a model
that is a FIFO or a device, labels that do not match the outputs, and a model that loads but fails
on real input. Torch-free: the released model and tiny ONNX files built with onnx.helper.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from edge_runtime.backends import BACKENDS, BackendError, load
from edge_runtime.errors import FloraEdgeError, InferenceError
from edge_runtime.metadata import INFO_KEY, LABELS_KEY, SPEC_KEY, MetadataError
from edge_runtime.modelfile import ModelFileError, check_model_file, onnx_layout
from edge_runtime.spec import PreprocessSpec
from tests.tiny_models import tiny_ncnn, tiny_onnx

REPO = Path(__file__).resolve().parents[1]
RELEASED = REPO / "models" / "oxford102-lite0"
ONNX_BACKENDS = [name for name, entry in BACKENDS.items() if ".onnx" in entry.suffixes]
TFLITE_BACKENDS = [name for name, entry in BACKENDS.items() if ".tflite" in entry.suffixes]
NCNN_BACKENDS = [name for name, entry in BACKENDS.items() if ".param" in entry.suffixes]  # a .param + .bin pair


def test_every_backend_is_covered_here():
    """A new backend must be added to the cases below (they iterate these lists)."""
    assert sorted(ONNX_BACKENDS + TFLITE_BACKENDS + NCNN_BACKENDS) == sorted(BACKENDS)


def with_external_data(folder: Path, location: str = "weights.bin") -> Path:
    """A tiny classifier whose every initializer lives in ``folder/weights.bin``; the locations then say
    ``location`` (the data file stays where it is: a hostile file names another one)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(tiny_onnx(folder / "inline.onnx")))
    external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, str(folder / "model.onnx"))
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def python_m(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m ARGS`` in a child: a blocked open fails the test by timeout instead of hanging it."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def classify_cli(model: Path, image: Path) -> subprocess.CompletedProcess:
    return python_m("floraedge", "classify", "--model", model, image)


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), done.stderr[-2000:]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    yy, xx = np.mgrid[0:120, 0:160]
    cv2.imwrite(str(path), np.stack([xx, yy, xx + yy], -1).astype(np.uint8))
    return path


# ---------------------------------------------------------------- the file walk itself


def test_the_walk_finds_what_onnx_finds(tmp_path):
    """The protobuf walk and onnx's own loader agree on metadata and on every external tensor."""
    path = with_external_data(tmp_path / "m")
    model = onnx.load(str(path), load_external_data=False)
    layout = onnx_layout(path.read_bytes())
    assert layout.props == {p.key: p.value for p in model.metadata_props}
    theirs = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer}
    assert {t.name: (t.location, str(t.offset), str(t.length)) for t in layout.external} == {
        name: (e["location"], e.get("offset", "0"), e["length"]) for name, e in theirs.items()
    }
    released = onnx_layout((RELEASED / "model_int8.onnx").read_bytes())
    assert set(released.props) >= {SPEC_KEY, LABELS_KEY, INFO_KEY} and released.external == []


def test_external_tensors_inside_subgraphs_and_attributes_are_found(tmp_path):
    """A Constant node's tensor inside an If branch, stored outside the file, is still checked."""
    value = numpy_helper.from_array(np.ones((2,), np.float32), "c")
    external_data_helper.set_external_data(value, location="../../etc/passwd", offset=0, length=8)
    value.data_location = TensorProto.EXTERNAL
    value.ClearField("raw_data")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=value)],
        "b",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
    )
    layout = onnx_layout(helper.make_model(graph).SerializeToString())
    assert [(t.name, t.location) for t in layout.external] == [("c", "../../etc/passwd")] * 2
    (tmp_path / "m.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        check_model_file(tmp_path / "m.onnx")


def test_deep_nesting_and_garbage_are_refused_not_recursed(tmp_path):
    def field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field (lengths < 2**14 here)
        size = len(payload)
        return (
            bytes([number << 3 | 2])
            + (bytes([size]) if size < 128 else bytes([size & 0x7F | 0x80, size >> 7]))
            + payload
        )

    graph = b""
    for _ in range(40):  # graph -> node -> attribute -> graph ...: 120 levels of messages
        graph = field(1, field(5, field(6, graph)))
    with pytest.raises(ModelFileError, match="nested over"):
        onnx_layout(field(7, graph))
    for junk in (b"\xff" * 20, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256))):
        with pytest.raises(ModelFileError, match="not a readable ONNX file"):
            onnx_layout(junk)


# ---------------------------------------------------------------- hostile files, on every backend


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
@pytest.mark.parametrize(
    "location", ["../../../../../../etc/passwd", "/etc/passwd", "sub/../../outside.bin"], ids=["dotdot", "abs", "mixed"]
)
def test_external_data_outside_the_folder_is_refused(tmp_path, backend, location):
    (tmp_path / "outside.bin").write_bytes(bytes(4096))
    path = with_external_data(tmp_path / "m", location)
    with pytest.raises(ModelFileError, match="outside the model's folder|relative to the model's folder"):
        load(path, backend)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path, backend):
    path = with_external_data(tmp_path / "m")
    secret = tmp_path / "secret.bin"
    (tmp_path / "m" / "weights.bin").rename(secret)  # the real bytes, but outside
    (tmp_path / "m" / "weights.bin").symlink_to(secret)
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        load(path, backend)
    (tmp_path / "m" / "weights.bin").unlink()
    secret.rename(tmp_path / "m" / "real.bin")
    (tmp_path / "m" / "weights.bin").symlink_to("real.bin")  # a symlink that stays inside: fine
    assert load(path, backend).info.labels == tuple(f"flower {i}" for i in range(4))


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_external_data_that_is_short_missing_or_a_device_is_refused(tmp_path, backend):
    path = with_external_data(tmp_path / "m")
    data = tmp_path / "m" / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="past the end"):
        load(path, backend)
    data.unlink()
    with pytest.raises(ModelFileError, match="cannot open"):
        load(path, backend)
    data.symlink_to("/dev/zero")  # a device: outside the folder, and not a regular file either
    with pytest.raises(ModelFileError):
        load(path, backend)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_external_data_that_is_a_fifo_is_refused_without_blocking(tmp_path, backend, photo):
    path = with_external_data(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    os.mkfifo(tmp_path / "m" / "weights.bin")
    with pytest.raises(ModelFileError, match="not a regular file"):
        load(path, backend)
    assert_one_line_error(classify_cli(path, photo), "not a regular file")


@pytest.mark.parametrize("backend", ONNX_BACKENDS + TFLITE_BACKENDS + NCNN_BACKENDS)
def test_a_model_that_is_a_fifo_or_a_device_is_refused_without_blocking(tmp_path, backend):
    suffix = BACKENDS[backend].suffixes[0]
    fifo = tmp_path / f"model{suffix}"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="not a regular file"):
        load(fifo, backend)
    device = tmp_path / f"zero{suffix}"
    device.symlink_to("/dev/zero")
    with pytest.raises(ModelFileError, match="not a regular file"):
        load(device, backend)
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    with pytest.raises(ModelFileError, match="is empty"):
        load(tmp_path / f"empty{suffix}", backend)


@pytest.mark.parametrize("backend", NCNN_BACKENDS)
def test_ncnn_weights_that_are_a_fifo_or_a_device_are_refused_without_blocking(tmp_path, backend):
    param = tiny_ncnn(tmp_path / "model.ncnn.param")
    weights = param.with_suffix(".bin")
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(ModelFileError, match="not a regular file"):
        load(param, backend)
    weights.unlink()
    weights.symlink_to("/dev/zero")  # outside the folder too: either refusal stops it before ncnn reads a byte
    with pytest.raises(ModelFileError, match="links out of the model's folder|not a regular file"):
        load(param, backend)


def test_a_fifo_model_through_the_cli_is_one_line_and_does_not_block(tmp_path, photo):
    os.mkfifo(tmp_path / "model.onnx")
    os.mkfifo(tmp_path / "model.tflite")
    for name in ("model.onnx", "model.tflite"):
        assert_one_line_error(classify_cli(tmp_path / name, photo), "not a regular file")


@pytest.mark.parametrize(
    ("backend", "source"),
    [(b, "model_int8.onnx") for b in ONNX_BACKENDS]
    + [(b, "model_int8.tflite") for b in TFLITE_BACKENDS]
    + [(b, "model.ncnn.param") for b in NCNN_BACKENDS],
)
@pytest.mark.parametrize("keep", [0.5, 0.05, 0.001])
def test_a_truncated_model_is_one_clear_error(tmp_path, backend, source, keep):
    if backend == "opencv" and source.endswith(".onnx"):
        source = "model_fp32.onnx"
        tiny_onnx(tmp_path / source)  # OpenCV DNN does not run int8 QDQ files: a float file, truncated
        data = (tmp_path / source).read_bytes()
    elif backend in NCNN_BACKENDS:  # the graph cut short, its weights whole beside it
        data = tiny_ncnn(tmp_path / source).read_bytes()
        (tmp_path / f"cut_{source}").with_suffix(".bin").write_bytes(
            (tmp_path / source).with_suffix(".bin").read_bytes()
        )
        (tmp_path / f"cut_{source}.json").write_text((tmp_path / f"{source}.json").read_text())
    else:
        data = (RELEASED / source).read_bytes()
    path = tmp_path / f"cut_{source}"
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(FloraEdgeError) as caught:
        load(path, backend)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_symlinked_model_loads_from_its_real_folder(tmp_path):
    """A model path that is a symlink is resolved: its external data is looked for (and confined) where it lives."""
    path = with_external_data(tmp_path / "real")
    (tmp_path / "link.onnx").symlink_to(path)
    assert check_model_file(tmp_path / "link.onnx").path == path.resolve()
    assert load(tmp_path / "link.onnx").info.labels[0] == "flower 0"


def tflite_without_zip(dest: Path) -> Path:
    """The released .tflite without its appended metadata zip (the flatbuffer alone still runs)."""
    src = RELEASED / "model_int8.tflite"
    with zipfile.ZipFile(src) as z:
        start = min(info.header_offset for info in z.infolist())  # absolute: zipfile adds the prefix's length
    dest.write_bytes(src.read_bytes()[:start])
    return dest


@pytest.mark.parametrize("backend", ONNX_BACKENDS + TFLITE_BACKENDS + NCNN_BACKENDS)
def test_labels_must_match_the_outputs_on_every_backend(tmp_path, backend):
    if backend in NCNN_BACKENDS:
        path, outputs = tiny_ncnn(tmp_path / "model.ncnn.param", labels=["a", "b", "c"]), 4
    elif backend in TFLITE_BACKENDS:
        path = tflite_without_zip(tmp_path / "model.tflite")
        spec = load(RELEASED / "model_int8.tflite").info.spec
        (tmp_path / "model.tflite.json").write_text(json.dumps({"spec": spec.to_dict(), "labels": ["a", "b", "c"]}))
        outputs = 102
    else:
        path = tiny_onnx(tmp_path / "model.onnx", labels=["a", "b", "c"])
        outputs = 4
    with pytest.raises(MetadataError, match=f"3 labels but the model has {outputs} outputs"):
        load(path, backend)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_opencv_reads_the_embedded_metadata_without_onnx(tmp_path, backend):
    """Every ONNX backend takes the labels and spec from the file itself (the device has no onnx package)."""
    spec = PreprocessSpec(crop_size=40, resize_size=44)
    loaded = load(tiny_onnx(tmp_path / "model.onnx", spec=spec, labels=list("wxyz")), backend)
    assert loaded.info.labels == tuple("wxyz") and loaded.info.spec == spec


# ---------------------------------------------------------------- failures while running


def gather_bomb(path: Path, spec: PreprocessSpec) -> Path:
    """Loads, and runs on a black image (the load-time trial), but fails on any brighter one: it gathers row
    ``int(max(input) * 100)`` of a 10-row table, out of bounds for real pixels."""
    s = spec.crop_size
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    hundred = numpy_helper.from_array(np.array(100.0, np.float32), "hundred")
    shape = numpy_helper.from_array(np.array([1], np.int64), "shape")
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "hundred"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["i"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["i", "shape"], ["idx"]),
        helper.make_node("Gather", ["table", "idx"], ["logits"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "gather_bomb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [table, hundred, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in ((SPEC_KEY, spec.to_json()), (LABELS_KEY, json.dumps(list("abcd"))), (INFO_KEY, "{}")):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_a_model_failing_on_real_input_is_one_line_in_classify(tmp_path, photo):
    path = gather_bomb(tmp_path / "bomb.onnx", PreprocessSpec(crop_size=32, resize_size=36))
    loaded = load(path, "onnxruntime")  # the trial run on zeros passes
    with pytest.raises(InferenceError, match="onnxruntime failed to run the model"):
        loaded.predict(np.ones((1, 3, 32, 32), np.float32))
    assert_one_line_error(classify_cli(path, photo), "onnxruntime failed to run the model")


def test_run_and_the_bench_measurement_report_a_failing_model_in_one_line(tmp_path, photo):
    path = gather_bomb(tmp_path / "bomb.onnx", PreprocessSpec(crop_size=32, resize_size=36))
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a.jpg").write_bytes(photo.read_bytes())
    done = python_m("floraedge", "run", "--model", path, "--source", tmp_path / "frames", "--headless")
    assert_one_line_error(done, "onnxruntime failed to run the model")
    np.save(tmp_path / "data.npy", np.ones((2, 3, 32, 32), np.float32))
    np.save(tmp_path / "targets.npy", np.zeros(2, np.int64))
    done = python_m(
        "benchmarks.measure",
        *("--model", path, "--data", tmp_path / "data.npy", "--targets", tmp_path / "targets.npy"),
        *("--predictions", tmp_path / "p.npy"),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("InferenceError: onnxruntime failed to run the model")


@pytest.mark.parametrize(
    ("backend", "model"),
    [(b, "tiny") for b in ONNX_BACKENDS]
    + [(b, "model_int8.tflite") for b in TFLITE_BACKENDS]
    + [(b, "tiny-ncnn") for b in NCNN_BACKENDS],
)
def test_every_runtime_error_while_running_is_an_inference_error(tmp_path, backend, model):
    """Whatever a runtime raises (ORT's Fail, cv2.error, LiteRT's ValueError) comes out as one InferenceError."""
    path = tiny_onnx(tmp_path / "model.onnx") if model == "tiny" else RELEASED / model
    path = tiny_ncnn(tmp_path / "model.ncnn.param") if model == "tiny-ncnn" else path
    loaded = load(path, backend)
    wrong = np.zeros((1, 5), np.float32)  # not an image batch at all
    with pytest.raises(InferenceError, match=f"{backend} failed to run the model") as caught:
        loaded.predict(wrong)
    assert "\n" not in str(caught.value)


def test_a_model_that_fails_even_on_zeros_is_refused_at_load(tmp_path):
    """The trial run: a model whose spec does not fit it fails at load, as a BackendError, on every backend."""
    model = onnx.load(str(tiny_onnx(tmp_path / "m.onnx")))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"  # a dynamic size: the shape check lets it by
    model.graph.node[0].attribute[0].ints[:] = [0, 0, 0, 0]
    gemm_w = next(t for t in model.graph.initializer if t.name == "fc_w")
    gemm_w.CopyFrom(numpy_helper.from_array(np.ones((4, 9), np.float32), "fc_w"))  # 9 inputs, the pool gives 8
    onnx.save(model, str(tmp_path / "broken.onnx"))
    for backend in ONNX_BACKENDS:
        with pytest.raises((BackendError, FloraEdgeError), match="does not run|cannot load|can load"):
            load(tmp_path / "broken.onnx", backend)


# ---------------------------------------------------------------- generated code never runs a name


def test_space_writes_the_model_name_as_a_literal(tmp_path):
    from floraedge import main

    name = 'x"); open("PWNED", "w"); ("y.onnx'
    model = tiny_onnx(tmp_path / name)
    out = tmp_path / "space"
    assert main(["space", "--model", str(model), "--out", str(out)]) == 0
    app = (out / "app.py").read_text()
    literals = [n.value for n in ast.walk(ast.parse(app)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert name in literals
    calls = {
        n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
        for n in ast.walk(ast.parse(app))
        if isinstance(n, ast.Call)
    }
    assert calls == {"create_app", "ServeConfig", "Path"}  # no open(), whatever the name says
    assert (out / name).is_file()
    for odd in ("new\nline.onnx", "tab\there.onnx"):
        tiny_onnx(tmp_path / odd)
        assert main(["space", "--model", str(tmp_path / odd), "--out", str(tmp_path / "s2")]) == 1
        assert not (tmp_path / "s2").exists()


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".param"])
def test_an_oversized_model_is_refused_from_its_size_alone(tmp_path, suffix):
    """A sparse file of 2 GiB + 1 byte costs nothing to make and nothing to refuse: nothing of it is read."""
    path = tmp_path / f"huge{suffix}"
    with open(path, "wb") as f:
        f.truncate(2 * 1024**3 + 1)
    with pytest.raises(ModelFileError, match="over the 2,147,483,648-byte limit"):
        load(path)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_a_runtime_that_cannot_load_a_file_says_so_in_one_line(tmp_path, backend):
    """A well-formed ONNX file with an operator no runtime knows: the runtime's refusal (several lines from
    OpenCV) is one line."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["input"], ["logits"], domain="example.hostile")],
        "unknown_op",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.hostile", 1)]
    )
    model.ir_version = 8
    spec = PreprocessSpec(crop_size=32, resize_size=36)
    for key, value in ((SPEC_KEY, spec.to_json()), (LABELS_KEY, json.dumps(list("abcd"))), (INFO_KEY, "{}")):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(BackendError) as caught:
        load(tmp_path / "model.onnx", backend)
    assert "\n" not in str(caught.value) and "model.onnx" in str(caught.value)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
@pytest.mark.parametrize("sidecar", ["labels.txt", "spec.json", "model.onnx.json"])
def test_a_sidecar_that_links_out_of_the_folder_is_refused(tmp_path, backend, sidecar):
    """Sidecar labels are served by `GET /v1/model`: a labels.txt linked to /etc/passwd must not publish it."""
    model = tiny_onnx(tmp_path / "model.onnx", embed=False)
    (tmp_path / "spec.json").write_text(PreprocessSpec(crop_size=32, resize_size=36).to_json())
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    assert load(model, backend).info.labels == tuple("abcd")  # the sidecars, when they are the folder's own files
    (tmp_path / sidecar).unlink(missing_ok=True)
    (tmp_path / sidecar).symlink_to("/etc/passwd")
    with pytest.raises(ModelFileError, match="links out of the model's folder"):
        load(model, backend)


@pytest.mark.parametrize("backend", NCNN_BACKENDS)
def test_an_ncnn_sidecar_that_links_out_of_the_folder_is_refused(tmp_path, backend):
    """An ncnn model's labels and spec are only in its sidecar: a link out of the folder is refused as for ONNX."""
    model = tiny_ncnn(tmp_path / "model.ncnn.param")
    sidecar = tmp_path / "model.ncnn.param.json"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    sidecar.rename(outside)
    sidecar.symlink_to(outside)
    with pytest.raises(ModelFileError, match="links out of the model's folder"):
        load(model, backend)
