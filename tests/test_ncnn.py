"""The ncnn backend, torch-free: the same answers as onnxruntime on the same weights, fed exactly what
``preprocess()`` makes, and one-line refusals of broken or foreign .param + .bin pairs."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from edge_runtime.backends import NCNN_16BIT_OPTIONS, load
from edge_runtime.errors import FloraEdgeError
from edge_runtime.modelfile import MAX_NCNN_LAYERS, model_bytes, model_files
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.spec import PreprocessSpec
from tests.conftest import REAL_DATA
from tests.tiny_models import tiny_ncnn, tiny_onnx

pytest.importorskip("ncnn")

SPEC = PreprocessSpec(crop_size=48, resize_size=56)


@pytest.fixture
def pair(tmp_path):
    """The same network and weights as an ncnn pair and an ONNX file, in folders of their own."""
    (tmp_path / "ncnn").mkdir()
    (tmp_path / "onnx").mkdir()
    ncnn_model = tiny_ncnn(tmp_path / "ncnn" / "tiny.ncnn.param", num_classes=5, spec=SPEC, seed=3)
    onnx_model = tiny_onnx(tmp_path / "onnx" / "tiny.onnx", num_classes=5, spec=SPEC, seed=3, output="probabilities")
    return ncnn_model, onnx_model


def jpeg_photos(tmp_path, count: int = 6) -> list[np.ndarray]:
    """Real flower JPEGs where the data is here, else smooth photo-like JPEGs; decoded by the runtime's reader."""
    real = sorted((REAL_DATA / "jpg").glob("*.jpg"))[::400][:count] if REAL_DATA.is_dir() else []
    if real:
        return [read_image_bgr(p) for p in real]
    rng = np.random.default_rng(0)
    photos = []
    for i in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (90 + 7 * i, 120, 3), dtype=np.uint8), (7, 7), 0)
        path = tmp_path / f"photo{i}.jpg"
        cv2.imwrite(str(path), image)
        photos.append(read_image_bgr(path))
    return photos


def test_ncnn_agrees_with_onnxruntime_on_the_same_weights(pair, tmp_path):
    ncnn_model, onnx_model = pair
    ncnn_backend, ort = load(ncnn_model), load(onnx_model, "onnxruntime")
    assert ncnn_backend.name == "ncnn" and ncnn_backend.compute == "fp32"
    assert not any(getattr(ncnn_backend.net.opt, option) for option in NCNN_16BIT_OPTIONS)
    assert ncnn_backend.info.labels == ort.info.labels and ncnn_backend.info.spec == SPEC
    batch = np.concatenate([preprocess(image, SPEC) for image in jpeg_photos(tmp_path)])
    got, expected = ncnn_backend.predict(batch), ort.predict(batch)
    assert got.shape == expected.shape == (len(batch), 5) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_the_input_ncnn_runs_on_is_exactly_what_preprocess_made(pair, tmp_path):
    """The backend feeds ``preprocess()``'s array as it is: the network's input blob, read back from ncnn, is
    that array bit for bit, and the caller's array is left unchanged."""
    backend = load(pair[0])
    batch = np.concatenate([preprocess(image, SPEC) for image in jpeg_photos(tmp_path, 2)])
    before = batch.copy()
    for sample in batch:
        extractor = backend.net.create_extractor()
        extractor.input(backend.input_name, backend.ncnn.Mat(np.ascontiguousarray(sample)).clone())
        status, seen = extractor.extract(backend.input_name)
        assert status == 0
        assert np.abs(np.array(seen) - sample).max() == 0.0
    backend.predict(batch)
    np.testing.assert_array_equal(batch, before)


def test_thread_counts_give_the_same_outputs(pair, tmp_path):
    batch = np.concatenate([preprocess(image, SPEC) for image in jpeg_photos(tmp_path, 3)])
    one, two = (load(pair[0], threads=t).predict(batch) for t in (1, 2))
    assert load(pair[0], threads=2).net.opt.num_threads == 2
    np.testing.assert_allclose(one, two, atol=1e-6)


def test_the_pair_is_one_model(pair):
    param = pair[0]
    assert model_files(param) == [param, param.with_suffix(".bin")]
    assert model_bytes(param) == param.stat().st_size + param.with_suffix(".bin").stat().st_size
    assert load(param, "auto").name == "ncnn"  # .param picks the ncnn backend


def one_line_error(path, backend="ncnn") -> str:
    with pytest.raises(FloraEdgeError) as caught:
        load(path, backend)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_broken_pairs_are_refused_in_one_line(pair, tmp_path, capfd):
    param = pair[0]
    weights = param.with_suffix(".bin")
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated weights
    capfd.readouterr()
    assert "not a model ncnn can load" in one_line_error(param)
    assert capfd.readouterr().err == ""  # ncnn's own lines ("ModelBin read weight_data failed") only with --verbose
    weights.write_bytes(b"")
    assert "is empty" in one_line_error(param)
    weights.unlink()
    assert "needs its weights tiny.ncnn.bin beside it" in one_line_error(param)

    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(good)
    os.symlink(outside, weights)
    assert "links out of the model's folder" in one_line_error(param)
    weights.unlink()
    weights.write_bytes(good)

    text = param.read_text()
    param.write_text(text.replace("7767517", "1234567", 1))
    assert "not a text ncnn .param file" in one_line_error(param)
    lines = text.splitlines()
    param.write_text("\n".join([lines[0], f"{MAX_NCNN_LAYERS + 1} 6", *lines[2:]]))
    assert "declares 100,001 layers" in one_line_error(param)
    param.write_text(text.replace("InnerProduct fc 1 1 g z", "InnerProduct fc 1 1 nowhere z"))
    assert "not a model ncnn can load" in one_line_error(param)
    param.write_text(text)
    assert load(param).name == "ncnn"  # restored: the same files load again


def test_metadata_that_does_not_fit_the_model_is_refused(pair):
    param = pair[0]
    sidecar = param.with_name(param.name + ".json")
    sidecar.write_text(sidecar.read_text().replace('"flower 4"', '"flower 4", "flower 5"'))
    assert "6 labels but the model has 5 outputs" in one_line_error(param)
    sidecar.unlink()
    assert "carries no preprocessing spec" in one_line_error(param)


def test_an_onnx_file_is_not_an_ncnn_model(pair):
    assert "runs .param files" in one_line_error(pair[1])


def test_a_space_of_an_ncnn_model_carries_its_weights_and_its_sidecar(pair, tmp_path):
    from floraedge import main

    out = tmp_path / "space"
    assert main(["space", "--model", str(pair[0]), "--out", str(out)]) == 0
    for name in ("tiny.ncnn.param", "tiny.ncnn.bin", "tiny.ncnn.param.json"):
        assert (out / name).is_file(), name
    assert "ncnn" in (out / "requirements.txt").read_text().split()
    assert load(out / "tiny.ncnn.param").info.labels == load(pair[0]).info.labels
