"""Standard TFLite metadata: the model is unchanged, the metadata reads back, MediaPipe accepts it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime.backends import load
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.spec import PreprocessSpec
from export.tflite_metadata import LABELS_FILE, add_metadata, read_metadata
from tests.conftest import MEDIAPIPE_VERSION, run_mediapipe, square_photo

SIZE = 32
LABELS = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold"]
MEAN = STD = (127.5, 127.5, 127.5)
SPEC = PreprocessSpec(crop_size=SIZE, resize_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3, layout="NHWC")


class Tiny(torch.nn.Module):
    """Conv -> ReLU -> average pool -> MLP -> softmax. The MLP's 410k weights make ai-edge-quantizer
    keep them outside the flatbuffer (it does so above 256 kB). Without biases the scores follow the
    image rather than the biases, and the scaled last layer sets them well apart."""

    def __init__(self, num_classes: int = len(LABELS)):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(
            torch.nn.Linear(8, 640), torch.nn.ReLU(), torch.nn.Linear(640, 640), torch.nn.ReLU()
        )
        self.fc = torch.nn.Linear(640, num_classes)
        with torch.no_grad():
            for layer in (self.features[0], self.head[0], self.head[2], self.fc):
                layer.bias.zero_()
            self.fc.weight.mul_(40.0)

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        return torch.softmax(self.fc(self.head(x)), dim=-1)


def _calibration_images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A float32 model (NHWC input), a full-integer one from ai-edge-quantizer's static recipe (int8 input
    and output) and one from the export's recipe (int8 inside, float32 input and output)."""
    import litert_torch
    from ai_edge_quantizer import quantizer, recipe

    from export.converters import int8_float_edges_recipe

    root = tmp_path_factory.mktemp("tflite")
    fp32 = root / "tiny_fp32.tflite"
    model = litert_torch.to_channel_last_io(Tiny().eval(), args=[0])
    litert_torch.convert(model, (torch.zeros(1, SIZE, SIZE, 3),)).export(str(fp32))
    models = {"fp32": fp32}
    for kind, quantization in (("int8", recipe.static_wi8_ai8()), ("int8-float-edges", int8_float_edges_recipe())):
        qt = quantizer.Quantizer(str(fp32))
        qt.load_quantization_recipe(quantization)
        input_name = _signature_input(fp32)
        calibration = qt.calibrate(
            {"serving_default": [{input_name: x} for x in _calibration_images(8)]}, num_threads=1
        )
        models[kind] = root / f"tiny_{kind}.tflite"
        qt.quantize(calibration, enable_progress_report=False).export_model(str(models[kind]), overwrite=True)
    return models


def _signature_input(path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_list()["serving_default"]["inputs"][0]


def _run(path: Path, inputs: list[np.ndarray]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(results)


def _test_inputs(path: Path) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    dtype = Interpreter(model_path=str(path)).get_input_details()[0]["dtype"]
    rng = np.random.default_rng(1)
    if dtype == np.int8:
        return [rng.integers(-128, 128, (1, SIZE, SIZE, 3)).astype(np.int8) for _ in range(4)]
    return [rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(4)]


def _add(model: Path, out: Path, **overrides) -> Path:
    kwargs = dict(labels=LABELS, mean=MEAN, std=STD, name="tiny", description="A test model.", version="v1")
    kwargs.update(overrides)
    return add_metadata(model, out, **kwargs)


def _external_buffers(path: Path) -> int:
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAs(path.read_bytes(), 0)
    return sum(model.Buffers(i).Offset() > 1 for i in range(model.BuffersLength()))


@pytest.mark.parametrize("kind", ["fp32", "int8", "int8-float-edges"])
def test_metadata_leaves_the_model_unchanged(models, tmp_path, kind):
    source = models[kind]
    if kind.startswith("int8"):  # the case that breaks a naive repack: weights stored after the flatbuffer
        assert _external_buffers(source) > 0
    out = _add(source, tmp_path / "with_metadata.tflite")
    assert _external_buffers(out) == 0  # pulled back inline
    inputs = _test_inputs(source)
    np.testing.assert_array_equal(_run(out, inputs), _run(source, inputs))


@pytest.mark.parametrize("kind", ["fp32", "int8", "int8-float-edges"])
def test_metadata_reads_back(models, tmp_path, kind):
    out = _add(models[kind], tmp_path / "m.tflite", extra_files={"floraedge.json": b"{}"})
    meta = read_metadata(out)
    assert (meta["name"], meta["description"], meta["version"]) == ("tiny", "A test model.", "v1")
    assert meta["min_parser_version"] == "1.0.0"
    assert meta["input"]["name"] == "image" and meta["input"]["color_space"] == "RGB"
    assert meta["input"]["mean"] == MEAN and meta["input"]["std"] == STD
    expected_range = ((-128.0,) * 3, (127.0,) * 3) if kind == "int8" else ((-1.0,) * 3, (1.0,) * 3)
    assert (meta["input"]["min"], meta["input"]["max"]) == expected_range
    assert meta["output"]["name"] == "probability" and meta["output"]["label_file"] == LABELS_FILE
    assert meta["labels"] == LABELS
    assert meta["files"] == [LABELS_FILE, "floraedge.json"]


def test_zip_is_stored_with_extra_files_and_read_by_the_runtime(models, tmp_path):
    card = {"spec": SPEC.to_dict(), "info": {"precision": "fp32"}}
    out = _add(models["fp32"], tmp_path / "m.tflite", extra_files={"floraedge.json": json.dumps(card).encode()})
    with zipfile.ZipFile(out) as z:
        infos = z.infolist()
        assert [i.filename for i in infos] == [LABELS_FILE, "floraedge.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert z.read(LABELS_FILE).decode().splitlines() == LABELS
        assert json.loads(z.read("floraedge.json")) == card
    backend = load(out)  # the edge runtime finds spec and labels in the same zip
    assert backend.info.spec == SPEC and backend.info.labels == tuple(LABELS)


def test_constant_data_stays_16_byte_aligned(models, tmp_path):
    from ai_edge_litert import schema_py_generated as tfl

    out = _add(models["int8"], tmp_path / "m.tflite")
    model = tfl.Model.GetRootAs(out.read_bytes(), 0)
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            tab = buffer._tab  # the generated accessors expose no position; the Table does
            assert tab.Vector(tab.Offset(4)) % 16 == 0, i


def test_output_is_reproducible_and_rewriting_is_idempotent(models, tmp_path):
    extra = {"floraedge.json": b'{"a": 1}'}
    first = _add(models["int8"], tmp_path / "a.tflite", extra_files=extra).read_bytes()
    second = _add(models["int8"], tmp_path / "b.tflite", extra_files=extra).read_bytes()
    assert first == second
    again = _add(tmp_path / "a.tflite", tmp_path / "c.tflite", extra_files=extra).read_bytes()
    assert again == first  # the old metadata and zip are replaced, not stacked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tflite", "b.tflite", "c.tflite"]  # no temp files left


def test_bad_arguments_are_refused(models, tmp_path):
    out = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match="4 labels but the model has 5 outputs"):
        _add(models["fp32"], out, labels=LABELS[:4])
    with pytest.raises(ValueError, match="labels must be"):
        _add(models["fp32"], out, labels=[*LABELS[:4], "two\nlines"])
    with pytest.raises(ValueError, match="std values must be positive"):
        _add(models["fp32"], out, std=(127.5, 0.0, 127.5))
    with pytest.raises(ValueError, match="would replace"):
        _add(models["fp32"], out, extra_files={LABELS_FILE: b"x"})
    (tmp_path / "junk.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a TFLite model"):
        _add(tmp_path / "junk.tflite", out)
    with pytest.raises(ValueError, match="no TFLITE_METADATA"):
        read_metadata(models["fp32"])
    assert not out.exists()


@pytest.mark.slow
def test_mediapipe_reads_normalization_and_labels(models, tmp_path):
    image = square_photo(tmp_path / "flower.png", SIZE)
    out = _add(models["fp32"], tmp_path / "tiny_with_metadata.tflite")

    ours = _run(out, [preprocess(read_image_bgr(image), SPEC)])[0]
    order = np.argsort(-ours)
    assert ours[order[0]] - ours[order[1]] > 0.05, ours  # a top-1 that means something
    wrong = _run(out, [preprocess(read_image_bgr(image), SPEC.replace(mean=(0.0,) * 3, std=(1.0,) * 3))])[0]
    assert np.abs(wrong - ours).max() > 0.01  # the comparison below would notice a wrong normalization

    refused = run_mediapipe(models["fp32"], image, tmp_path)  # without metadata: no NormalizationOptions
    assert refused.returncode != 0 and "NormalizationOptions" in refused.stderr, refused.stderr[-2000:]

    done = run_mediapipe(out, image, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == MEDIAPIPE_VERSION and result["head"] == "probability"
    categories = result["results"][0]
    assert [c[0] for c in categories] == order[:3].tolist()
    assert categories[0][1] == LABELS[order[0]]  # MediaPipe's top-1 name is ours
    assert all(name == LABELS[index] for index, name, _ in categories)
    np.testing.assert_allclose([c[2] for c in categories], ours[order[:3]], atol=1e-4)


@pytest.mark.slow
def test_mediapipe_runs_the_int8_file_with_float_edges(models, tmp_path):
    """int8 inside, float32 input and probabilities: MediaPipe loads it (it refuses int8 input) and its
    top-3 and scores are ours."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(models["int8-float-edges"]))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())
    image = square_photo(tmp_path / "flower.png", SIZE)
    out = _add(models["int8-float-edges"], tmp_path / "tiny_int8_with_metadata.tflite")
    ours = _run(out, [preprocess(read_image_bgr(image), SPEC)])[0]
    done = run_mediapipe(out, image, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    categories = json.loads(done.stdout.strip().splitlines()[-1])["results"][0]
    order = np.argsort(-ours)
    assert [c[0] for c in categories] == order[:3].tolist() and categories[0][1] == LABELS[order[0]]
    np.testing.assert_allclose([c[2] for c in categories], ours[order[:3]], atol=1e-3)
    assert ours.sum() == pytest.approx(1.0, abs=1e-5)  # float32 probabilities, not int8 steps


def test_a_label_file_that_inflates_to_100MB_is_refused_by_the_reader_and_the_runtime(models, tmp_path):
    from edge_runtime.bounded import TooLargeError
    from edge_runtime.metadata import MetadataError

    card = {"spec": SPEC.to_dict(), "info": {"precision": "fp32"}}
    good = _add(models["fp32"], tmp_path / "m.tflite", extra_files={"floraedge.json": json.dumps(card).encode()})
    with zipfile.ZipFile(good) as z:
        flatbuffer = good.read_bytes()[: z.infolist()[0].header_offset]
    bomb = tmp_path / "bomb.tflite"
    with bomb.open("wb") as f:
        f.write(flatbuffer)
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(LABELS_FILE, b"a\n" * 50_000_000)  # 100 MB of labels in ~100 kB
            z.writestr("floraedge.json", json.dumps(card))
    assert bomb.stat().st_size < good.stat().st_size + 1_000_000
    with pytest.raises(TooLargeError, match="declares 100,000,000 bytes, over the 16,777,216-byte limit"):
        read_metadata(bomb)
    with pytest.raises(MetadataError, match="declares 100,000,000 bytes"):
        load(bomb)
