"""The torch-free runtime: preprocessing parity, backends, metadata, classify CLI, import hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.backends import (
    BACKENDS,
    BackendError,
    dequantize,
    int8_kernels_may_saturate,
    linux_cpu_flags,
    load,
    quantize,
    session_around_amx_uint8_bug,
    uint8_layers_miscomputed,
    uint8_weights_as_int8,
)
from edge_runtime.classify import Classifier, softmax
from edge_runtime.metadata import MetadataError
from edge_runtime.modelfile import ModelFileError
from edge_runtime.preprocess import (
    ImageReadError,
    center_crop,
    decode_bgr,
    preprocess,
    read_image_bgr,
    resize_and_crop,
    resize_shorter_side,
)
from edge_runtime.spec import INCEPTION_SPEC, PreprocessSpec, SpecError
from floraedge import main as cli_main
from tests.conftest import REAL_DATA, REPO
from tests.tiny_models import tiny_onnx


@pytest.fixture
def model(tmp_path):
    return tiny_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (5, 5), 0)
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), image)
    return path


def test_spec_json_round_trip_and_validation():
    spec = INCEPTION_SPEC.replace(crop_size=260, resize_size=297, layout="NHWC")
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    assert spec.input_shape == (1, 260, 260, 3)
    with pytest.raises(SpecError, match="unknown preprocessing spec fields"):
        PreprocessSpec.from_dict({**spec.to_dict(), "gamma": 2})
    with pytest.raises(SpecError, match="interpolation"):
        spec.replace(interpolation="lanczos9")
    with pytest.raises(SpecError, match="crop_size <= resize_size"):
        spec.replace(crop_size=400)


def test_preprocess_converts_bgr_to_rgb_and_normalizes():
    frame = np.zeros((10, 10, 3), np.uint8)
    frame[:, :, 2] = 255  # pure red in OpenCV's BGR order
    spec = PreprocessSpec(crop_size=8, resize_size=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = preprocess(frame, spec)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, -1.0, -1.0])  # R channel first, (255-127.5)/127.5
    assert preprocess(frame, spec.replace(layout="NHWC")).shape == (1, 8, 8, 3)


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_both_layouts_normalize_each_channel_with_its_own_mean_and_std(color_order):
    frame = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # 8x8: no resize, no crop
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = PreprocessSpec(crop_size=8, resize_size=8, mean=mean, std=std, color_order=color_order)
    pixels = frame[:, :, ::-1] if color_order == "RGB" else frame
    expected = (pixels / 255.0 - np.array(mean)) / np.array(std)
    nhwc, nchw = preprocess(frame, spec.replace(layout="NHWC")), preprocess(frame, spec)
    np.testing.assert_allclose(nhwc[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(nhwc[0], nchw[0].transpose(1, 2, 0))  # both layouts: the same numbers


@pytest.mark.realdata
@pytest.mark.torch
def test_preprocess_matches_the_torchvision_eval_transform_on_real_images():
    """Pixel tolerance, and identical top-1 of the ImageNet-trained Lite0 under both pipelines."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from train.models import MODELS

    entry = MODELS["efficientnet_lite0"]
    spec, model = entry.spec, entry.build("imagenet").eval()
    reference = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(spec.resize_size, antialias=True),
            v2.CenterCrop(spec.crop_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std),
        ]
    )
    names = sorted(p.name for p in (REAL_DATA / "jpg").glob("*.jpg"))[::50]
    ours = np.concatenate([preprocess(read_image_bgr(REAL_DATA / "jpg" / n), spec) for n in names])
    theirs = torch.stack([reference(Image.open(REAL_DATA / "jpg" / n).convert("RGB")) for n in names])
    diff = np.abs(ours - theirs.numpy()).mean(axis=(1, 2, 3))
    # OpenCV's area resize of the crop window vs torchvision's antialiased bilinear of the whole image:
    # measured 0.018 at most (0.014 when resizing the whole image), about 2 grey levels
    assert diff.max() < 0.03, diff
    with torch.no_grad():
        ours_top, (theirs_p, theirs_top) = model(torch.from_numpy(ours)).argmax(1), model(theirs).softmax(1).max(1)
    confident = theirs_p > 0.3  # ImageNet classes of flower photos are often near-ties; compare clear calls
    assert confident.sum() >= 8 and torch.equal(ours_top[confident], theirs_top[confident])


@pytest.mark.parametrize("backend", ["onnxruntime", "opencv", "openvino"])
def test_backends_agree_and_read_metadata(model, photo, backend):
    runner = load(model, backend, threads=1)
    assert runner.info.labels == ("flower 0", "flower 1", "flower 2", "flower 3")
    assert runner.info.spec.crop_size == 32
    batch = preprocess(read_image_bgr(photo), runner.info.spec)
    reference = load(model, "onnxruntime").predict(batch)
    np.testing.assert_allclose(runner.predict(batch), reference, rtol=1e-4, atol=1e-4)
    assert np.ptp(reference) > 0.01  # non-trivial logits
    double = runner.predict(np.concatenate([batch, batch]))
    np.testing.assert_allclose(double[1], reference[0], rtol=1e-4, atol=1e-4)


def test_classifier_top_k_is_sorted_probabilities(model, photo):
    prediction = Classifier(load(model), k=3)(read_image_bgr(photo))
    scores = [p for _, _, p in prediction.top]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert prediction.top[0][1] == f"flower {prediction.top[0][0]}"


@pytest.mark.parametrize("output", [None, "logits", "probabilities"])
def test_scores_are_the_files_probabilities_or_the_softmax_of_its_logits(tmp_path, photo, output):
    """Exported files end in a softmax and say so; files that do not say (older exports) give logits."""
    path = tiny_onnx(tmp_path / "m.onnx", output=output)
    backend = load(path)
    raw = backend.predict(preprocess(read_image_bgr(photo), backend.info.spec))[0]
    probabilities = Classifier(backend)(read_image_bgr(photo)).probabilities
    if output == "probabilities":
        assert raw.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_array_equal(probabilities, raw)  # not squashed a second time
    else:
        assert abs(raw.sum() - 1.0) > 0.01
        np.testing.assert_allclose(probabilities, softmax(raw), rtol=1e-6)


def test_an_unknown_output_declaration_is_refused(tmp_path):
    with pytest.raises(MetadataError, match="output is 'scores'.*'probabilities' or 'logits'"):
        load(tiny_onnx(tmp_path / "m.onnx", output="scores"))


def test_model_without_spec_is_refused_and_sidecar_is_accepted(tmp_path):
    bare = tiny_onnx(tmp_path / "bare.onnx", embed=False)
    with pytest.raises(MetadataError, match="carries no preprocessing spec"):
        load(bare)
    (tmp_path / "spec.json").write_text(PreprocessSpec(crop_size=32, resize_size=36).to_json())
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    assert load(bare).info.labels == ("a", "b", "c", "d")


def test_uint8_layers_are_worked_around_only_on_amx_cpus_with_onnxruntime_1_21_to_1_24():
    """onnxruntime 1.21-1.24's AMX kernel gets uint8 x uint8 layers wrong (docs/export.md); 1.20 and 1.25+ right."""
    x86 = {"format": "onnx", "precision": "int8", "onnx_int8": {"preset": "x86", "exact_layers": 3}}
    amx, vnni = {"avx512_vnni", "amx_int8"}, {"avx512_vnni"}
    assert uint8_layers_miscomputed(x86, "1.23.2", amx) and uint8_layers_miscomputed(x86, "1.21.0", amx)
    assert uint8_layers_miscomputed(x86, "1.24.4", amx)
    for right in ("1.20.1", "1.25.1", "1.32.0", "2.0.1"):
        assert not uint8_layers_miscomputed(x86, right, amx)
    assert not uint8_layers_miscomputed(x86, "1.23.2", vnni) and not uint8_layers_miscomputed(x86, "1.23.2", set())
    all7 = x86 | {"onnx_int8": {"preset": "x86-all-7bit", "exact_layers": 0}}
    assert not uint8_layers_miscomputed(all7, "1.23.2", amx)  # made without uint8 weights
    assert not uint8_layers_miscomputed(x86 | {"format": "tflite"}, "1.23.2", amx)
    assert not uint8_layers_miscomputed({"format": "onnx", "precision": "fp32"}, "1.23.2", amx)
    assert uint8_layers_miscomputed(
        {"format": "onnx", "precision": "int8"}, "1.23.2", amx
    )  # int8, made before the info
    assert uint8_layers_miscomputed({"output": "logits"}, "1.23.2", amx)  # a foreign file: may have uint8 weights


def uint8_weight_file(tmp_path: Path, quant_format: str = "QDQ", per_channel: bool = True) -> tuple[Path, np.ndarray]:
    """The tiny model with uint8 weights: by default as the x86 preset stores its exact layers (QDQ, symmetric,
    per channel); and a batch of inputs."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    batch = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)

    class Reader:
        def __init__(self):
            self.rows = iter({"input": x[None]} for x in batch)

        def get_next(self):
            return next(self.rows, None)

    dest = tmp_path / f"uint8-{quant_format}-{per_channel}.onnx"
    quantize_static(
        str(tiny_onnx(tmp_path / "float.onnx", embed=False)), str(dest), Reader(),
        quant_format=getattr(QuantFormat, quant_format), per_channel=per_channel, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8, extra_options={"WeightSymmetric": True},
    )  # fmt: skip
    return dest, batch


def emulated(model, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


def work_around(path: Path, info: dict):
    """The session the runtime's work-around gives for ``path`` (as on an AMX CPU with onnxruntime 1.21-1.24)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, session_around_amx_uint8_bug(
        ort, path, ort.SessionOptions(), ["CPUExecutionProvider"], session, info
    )


X86_INFO = {"format": "onnx", "precision": "int8", "onnx_int8": {"preset": "x86", "exact_layers": 3}}


def test_uint8_weights_become_int8_weights_of_the_same_values(tmp_path):
    import onnx
    from onnx import numpy_helper

    path, batch = uint8_weight_file(tmp_path)
    before = {t.data_type for t in onnx.load(str(path)).graph.initializer}
    rewrite = uint8_weights_as_int8(path)
    assert (rewrite.rewritten, rewrite.left) == (2, 0)  # the convolution's and the classifier's
    rewritten = onnx.load_from_string(rewrite.model)
    weights = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    weight_of = {n.name: weights.get(n.input[0], np.empty(0)) for n in rewritten.graph.node}
    dequantized = [n for n in rewritten.graph.node if n.op_type == "DequantizeLinear" and weight_of[n.name].ndim > 1]
    assert onnx.TensorProto.UINT8 in before and len(dequantized) == 2
    for node in dequantized:
        assert weights[node.input[0]].dtype == np.int8 and not weights[node.input[2]].any()
    assert not any(v.dtype == np.uint8 and v.ndim > 1 for v in weights.values())  # no uint8 weight left, none unread
    assert np.array_equal(emulated(rewrite.model, batch), emulated(str(path), batch))


def test_a_foreign_file_with_symmetric_uint8_weights_is_rewritten_too(tmp_path):
    path, batch = uint8_weight_file(tmp_path)
    session, fixed = work_around(path, {"output": "logits"})  # what a file from elsewhere tells the runtime
    assert fixed is not session
    assert np.abs(fixed.run(None, {"input": batch})[0] - emulated(str(path), batch)).max() < 0.05


def test_uint8_weights_of_integer_operators_are_left_and_said(tmp_path):
    path, _ = uint8_weight_file(tmp_path, quant_format="QOperator", per_channel=False)  # QLinearConv, QLinearMatMul
    assert uint8_weights_as_int8(path).left >= 1
    with pytest.warns(RuntimeWarning, match=r"cannot be stored as int8 .*may be wrong.*onnxruntime >= 1\.25"):
        session, fixed = work_around(path, {"output": "logits"})
    assert fixed is session


def test_a_file_without_uint8_weights_keeps_its_session(tmp_path):
    path = tiny_onnx(tmp_path / "float.onnx", embed=False)
    session, fixed = work_around(path, {"output": "logits"})
    assert fixed is session


def test_without_onnx_the_uint8_work_around_is_the_exact_emulation_and_says_so(tmp_path, monkeypatch):
    path, batch = uint8_weight_file(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.warns(RuntimeWarning, match="exact QDQ emulation.*pip install onnx"):
        _, fixed = work_around(path, X86_INFO)
    with pytest.warns(RuntimeWarning, match="could not be checked: the onnx package"):
        session, unchecked = work_around(path, {"output": "logits"})  # a foreign file: nothing to go by
    monkeypatch.undo()
    assert unchecked is session
    assert np.array_equal(fixed.run(None, {"input": batch})[0], emulated(str(path), batch))


def test_a_file_the_uint8_work_around_cannot_read_runs_as_its_emulation_and_says_why(tmp_path, monkeypatch):
    from edge_runtime import backends

    path, batch = uint8_weight_file(tmp_path)

    def too_large(_):
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(backends, "uint8_weights_as_int8", too_large)
    with pytest.warns(RuntimeWarning, match="could not be read to rewrite them .*2GB.*exact QDQ emulation"):
        _, fixed = work_around(path, X86_INFO)
    assert np.array_equal(fixed.run(None, {"input": batch})[0], emulated(str(path), batch))


def test_uint8_rewrite_keeps_a_file_that_lists_its_initializers_as_inputs_runnable(tmp_path):
    import onnx
    import onnxruntime as ort

    path, batch = uint8_weight_file(tmp_path)
    model = onnx.load(str(path))
    model.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in model.graph.initializer
    )  # as files of IR version 3 must
    listed = tmp_path / "listed.onnx"
    onnx.save(model, listed)
    rewritten = ort.InferenceSession(uint8_weights_as_int8(listed).model, providers=["CPUExecutionProvider"])
    assert [i.name for i in rewritten.get_inputs()] == ["input"]  # the renamed weights are not asked for
    assert np.abs(rewritten.run(None, {"input": batch})[0] - emulated(str(path), batch)).max() < 0.05


@pytest.mark.realdata
def test_released_int8_onnx_with_uint8_layers_gives_its_exact_emulations_answers_on_this_cpu():
    """The runtime's int8 kernels (with the work-around where this onnxruntime needs one) against the file's exact
    QDQ emulation, on real photos."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    released = REPO / "models" / "oxford102-lite0" / "model_int8.onnx"
    kernels, exact = load(released, "onnxruntime", threads=1), load(released, "onnxruntime", qdq_emulation=True)
    assert kernels.info.info["onnx_int8"]["exact_layers"]  # the released file has uint8 x uint8 layers
    photos = sorted((REAL_DATA / "jpg").glob("*.jpg"))[::60][:32]
    batch = np.concatenate([preprocess(read_image_bgr(p), kernels.info.spec) for p in photos])
    ours, theirs = kernels.predict(batch), exact.predict(batch)
    top2 = np.sort(theirs, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1  # a near-tie may flip on rounding alone
    assert clear.sum() >= 24 and np.array_equal(ours.argmax(1)[clear], theirs.argmax(1)[clear])
    assert np.abs(ours - theirs).max() < 0.1  # rounding: 0.03 measured; 0.68 on an AMX CPU without the work-around


def test_int8_onnx_saturation_warning_only_for_8_bit_weights_on_x86_without_vnni():
    int8 = {"format": "onnx", "precision": "int8"}  # a file exported before its weights' range was recorded
    avx2, vnni = {"fma", "avx2"}, {"avx2", "avx512_vnni"}
    assert int8_kernels_may_saturate(int8 | {"onnx_int8": {"weight_abs_max": 127}}, "x86_64", avx2)
    assert int8_kernels_may_saturate(int8, "AMD64", avx2)
    assert not int8_kernels_may_saturate(int8 | {"onnx_int8": {"weight_abs_max": 64}}, "x86_64", avx2)
    assert not int8_kernels_may_saturate(int8, "x86_64", vnni) and not int8_kernels_may_saturate(int8, "x86_64", set())
    assert not int8_kernels_may_saturate(int8, "aarch64", avx2)
    assert not int8_kernels_may_saturate({"format": "tflite", "precision": "int8"}, "x86_64", avx2)
    assert not int8_kernels_may_saturate({"format": "onnx", "precision": "fp32"}, "x86_64", avx2)


def test_cpu_flags_are_read_from_x86_cpuinfo_and_are_empty_on_arm():
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_vnni\nvmx flags\t: ept\nbugs\t\t: spectre_v1\n"
    assert linux_cpu_flags(x86) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert linux_cpu_flags((REPO / "tests" / "arm64" / "cpuinfo-pi5.txt").read_text()) == set()


def test_label_count_must_match_outputs(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", labels=["only", "three", "labels"])
    with pytest.raises(MetadataError, match="3 labels but the model has 4 outputs"):
        load(path)


def test_wrong_files_and_backends_are_clear_errors(tmp_path, model):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(BackendError, match="unknown model type '.pt'"):
        load(tmp_path / "model.pt")
    with pytest.raises(BackendError, match="runs .tflite files"):
        load(model, "litert")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="not a readable ONNX file"):  # refused before any runtime sees it
        load(tmp_path / "junk.onnx")
    with pytest.raises(BackendError, match="not in this onnxruntime build"):
        load(model, providers=["NoSuchExecutionProvider"])
    with pytest.raises(BackendError, match="QDQ emulation is an onnxruntime mode, not opencv's"):
        load(model, "opencv", qdq_emulation=True)


def test_missing_runtime_names_the_package(model):
    code = (
        f"import sys; sys.modules['onnxruntime'] = None\nfrom edge_runtime.backends import load\nload({str(model)!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "pip install onnxruntime" in result.stderr


@pytest.mark.parametrize("dtype, scale, zero_point", [(np.int8, 0.02, -3), (np.uint8, 0.05, 128)])
def test_quantized_io_round_trip(dtype, scale, zero_point):
    details = {"dtype": dtype, "quantization": (scale, zero_point)}
    x = np.linspace(-2, 2, 41, dtype=np.float32)
    q = quantize(x, details)
    assert q.dtype == dtype
    info = np.iinfo(dtype)
    representable = (x / scale + zero_point >= info.min) & (x / scale + zero_point <= info.max)
    np.testing.assert_allclose(dequantize(q, details)[representable], x[representable], atol=scale / 2 + 1e-6)


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([1000.0, 999.0, -1000.0]))
    assert np.isfinite(p).all() and p.argmax() == 0 and p.sum() == pytest.approx(1.0)


def test_classify_cli_json_lines(model, photo, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"broken")
    code = cli_main(
        ["classify", "--model", str(model), "--json", "--top-k", "2", str(photo), str(tmp_path / "broken.jpg")]
    )
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and "broken.jpg" in err  # the corrupt file is reported, the good one still classified
    assert lines[0]["image"] == str(photo) and len(lines[0]["top"]) == 2
    assert set(lines[0]["top"][0]) == {"index", "label", "score"} and lines[0]["model_ms"] > 0


def test_importing_the_runtime_never_imports_torch():
    code = (
        "import sys, floraedge, edge_runtime.backends, edge_runtime.classify, edge_runtime.cli\n"
        "floraedge.build_parser()\n"
        "bad = sorted(m for m in ('torch', 'torchvision', 'tensorflow') if m in sys.modules)\n"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_every_file_the_format_table_writes_opens_in_the_backends_it_names():
    from export.formats import FORMATS  # the table itself is torch-free

    for row in FORMATS:
        suffix = Path(row.filename).suffix
        for backend in (row.runtime, *row.also_runs_on):
            assert suffix in BACKENDS[backend].suffixes, (row.name, backend)


def smooth_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photo-like content (smooth shapes plus fine texture) at any size."""
    rng = np.random.default_rng(seed)
    small = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (3, 3), 0)
    return cv2.addWeighted(small, 0.8, grain, 0.2, 0)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment holding only the orientation tag."""
    import struct

    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.mark.parametrize("shape", [(500, 719), (480, 640), (1000, 1500), (257, 300), (300, 200), (256, 400)])
def test_cropping_before_resizing_matches_resizing_then_cropping(shape):
    """Only the window the crop keeps is resized; the result stays within ~1 grey level of the plain path."""
    spec = INCEPTION_SPEC.replace(crop_size=224, resize_size=256)
    image = smooth_photo(*shape)
    plain = center_crop(resize_shorter_side(image, 256), 224)
    ours = resize_and_crop(image, spec)
    diff = np.abs(ours.astype(np.int16) - plain.astype(np.int16))
    assert ours.shape == plain.shape == (224, 224, 3)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 6, (diff.mean(), np.percentile(diff, 99))
    if min(shape) <= 256:  # enlarging, or no resize at all: the exact path
        assert diff.max() == 0


def test_large_jpegs_decode_at_reduced_size_and_preprocess_the_same():
    spec = INCEPTION_SPEC.replace(crop_size=56, resize_size=64)
    data = cv2.imencode(".jpg", smooth_photo(1200, 1700), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    full, reduced = decode_bgr(data), decode_bgr(data, spec)
    assert full.shape == (1200, 1700, 3) and reduced.shape == (300, 425, 3)  # 1/4: 300 >= 4 x 64, 1/8 would not be
    diff = np.abs(preprocess(full, spec) - preprocess(reduced, spec))
    assert diff.mean() < 0.01 and diff.max() < 0.15, (
        diff.mean(),
        diff.max(),
    )  # normalized units: 0.01 = 1.3 grey levels
    small = cv2.imencode(".jpg", smooth_photo(500, 700))[1].tobytes()
    assert decode_bgr(small, spec).shape == (500, 700, 3)  # under 2 x 4 x 64: decoded in full
    png = cv2.imencode(".png", smooth_photo(1200, 1700))[1].tobytes()
    assert decode_bgr(png, spec).shape == (1200, 1700, 3)  # DCT scaling is a JPEG feature only


def test_reduced_decoding_keeps_the_exif_orientation():
    spec = INCEPTION_SPEC.replace(crop_size=28, resize_size=30)
    data = with_exif_orientation(cv2.imencode(".jpg", smooth_photo(600, 1000))[1].tobytes(), 6)  # 90 degrees
    assert decode_bgr(data).shape == (1000, 600, 3)
    assert decode_bgr(data, spec).shape == (250, 150, 3)  # 1/4 (600 >= 4 x 4 x 30) and rotated


def test_reading_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)  # no writer: a plain open() would wait forever
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image_bgr(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image_bgr(tmp_path)
    with pytest.raises(ImageReadError, match="cannot open"):
        read_image_bgr(tmp_path / "missing.jpg")
