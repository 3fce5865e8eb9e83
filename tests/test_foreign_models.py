"""Models other tools wrote: each runs through `inspect` + `classify` and gives the top-1 of the same weights
run the FloraEdge way (the same graph with FloraEdge's metadata embedded, as `floraedge export` writes it).

The foreign files are made the way other tools make them: a torchvision model exported with plain
`torch.onnx.export` (no metadata); the same network converted with litert-torch and given only the standard
TFLite metadata (what MediaPipe Model Maker writes; MediaPipe reads it); a uint8-input TFLite from
ai-edge-quantizer; an ONNX that takes BGR pixels 0-255 in NHWC. Those need torch to be made (``torch``
marker); the rules of resolution and the bad inputs are checked on tiny ONNX files, torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_runtime.backends import load
from edge_runtime.foreign import EMBEDDED, FLAGS, MODEL, SIDECAR, STANDARD, ModelOverrides
from edge_runtime.metadata import INFO_KEY, LABELS_KEY, SPEC_KEY, MetadataError
from edge_runtime.spec import PreprocessSpec
from floraedge import main
from tests.conftest import REAL_DATA
from tests.tiny_models import tiny_onnx

SIZE = 64
LABELS = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold"]
IMAGENET = PreprocessSpec(crop_size=SIZE, resize_size=73)  # torchvision's normalization, at a small size
# what MediaPipe Model Maker's files say (MediaPipe refuses per-channel normalization), NHWC for LiteRT
HALF = IMAGENET.replace(mean=(0.5,) * 3, std=(0.5,) * 3, layout="NHWC")
PHOTOS = 8


def run_cli(argv: list[str], capfd) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's exit
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


def one_line_error(argv, capfd, message: str) -> str:
    code, out, err = run_cli(argv, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert message in lines[0], lines[0]
    return lines[0]


def classify_json(model: Path, images: Path, capfd, *options) -> list[dict]:
    code, out, err = run_cli(["classify", "--model", model, "--json", "--top-k", "5", *options, images], capfd)
    assert code == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines()]


def top1(results: list[dict]) -> list[str]:
    return [r["top"][0]["label"] for r in results]


def scores(results: list[dict]) -> np.ndarray:
    """Each image's probabilities in label order (the top-5 of 5 classes is all of them)."""
    return np.array([[s for _, s in sorted((t["index"], t["score"]) for t in r["top"])] for r in results])


def inspect_json(model: Path, capfd, *options) -> dict:
    code, out, err = run_cli(["inspect", model, "--json", *options], capfd)
    assert code == 0, err[-3000:]
    return json.loads(out)


# ---------------------------------------------------------------- foreign files made as other tools make them


def real_photos(folder: Path) -> Path:
    """A few real flower photos (synthetic pictures where the dataset is absent)."""
    import cv2

    folder.mkdir()
    jpgs = sorted((REAL_DATA / "jpg").glob("*.jpg"))[: PHOTOS * 40 : 40]
    for i, jpg in enumerate(jpgs):
        (folder / f"{i:02d}.jpg").write_bytes(jpg.read_bytes())
    if not jpgs:
        rng = np.random.default_rng(0)
        for i in range(PHOTOS):
            cv2.imwrite(str(folder / f"{i:02d}.jpg"), rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    return folder


def torchvision_net(photos: Path):
    """torchvision's MobileNetV3-Small (random weights) whose last layer is fitted so that the top-1 follows the
    image: random networks give every image the same class. The layer projects the penultimate features onto
    their 5 principal directions, scaled to unit variance x 3 (PCA over the photos)."""
    import torch
    import torchvision

    from edge_runtime.preprocess import preprocess, read_image_bgr

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=len(LABELS)).eval()
    x = torch.from_numpy(np.concatenate([preprocess(read_image_bgr(p), IMAGENET) for p in sorted(photos.iterdir())]))
    with torch.no_grad():
        features = net.classifier[:-1](torch.flatten(net.avgpool(net.features(x)), 1)).double().numpy()
    mean = features.mean(0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    weight = vt[: len(LABELS)]
    weight *= 3.0 / ((features - mean) @ weight.T).std(0)[:, None]
    with torch.no_grad():
        net.classifier[-1].weight.copy_(torch.from_numpy(weight).float())
        net.classifier[-1].bias.copy_(torch.from_numpy(-mean @ weight.T).float())
    return net


def small_net(photos: Path):
    """A small convolutional network (conv, average pool, linear) whose top-1 survives full-integer
    quantization: the random MobileNetV3's features vary too little between images for an int8 grid. Its last
    layer scores the photos along their two widest principal directions (PCA over the photos)."""
    import torch

    from edge_runtime.preprocess import preprocess, read_image_bgr

    torch.manual_seed(0)
    # no ReLU: features centred like the input, so the head's bias cancels no large term (int8 would lose it)
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1))
    x = torch.from_numpy(np.concatenate([preprocess(read_image_bgr(p), IMAGENET) for p in sorted(photos.iterdir())]))
    with torch.no_grad():
        f = torch.flatten(features(x), 1).double().numpy()
    head = torch.nn.Linear(16, len(LABELS))
    mean = f.mean(0)
    _, _, vt = np.linalg.svd(f - mean, full_matrices=False)
    pc = vt[:2] * (4.0 / ((f - mean) @ vt[:2].T).std(0)[:, None])  # the two widest directions, far above int8 noise
    weight = np.stack([pc[0], -pc[0], pc[1], -pc[1], np.zeros_like(pc[0])])  # class 4: none stands out
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).float())
        head.bias.copy_(torch.from_numpy(-mean @ weight.T).float())
    return torch.nn.Sequential(features, torch.nn.Flatten(), head).eval()


def wrapped(net, kind: str):
    """``net`` (RGB, NCHW, ImageNet-normalized input, logits) as other tools ship it, ending in a softmax."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net.requires_grad_(False)
            self.register_buffer("mean", torch.tensor(IMAGENET.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET.std).view(1, 3, 1, 1))

        def forward(self, x):
            if kind == "bgr-255-nhwc":  # BGR pixels 0..255, NHWC (an OpenCV pipeline's model)
                x = (x.flip(-1).permute(0, 3, 1, 2) / 255.0 - self.mean) / self.std
            elif kind == "half":  # (pixel - 127.5) / 127.5, what uint8 models' metadata says
                x = ((x * 0.5 + 0.5) - self.mean) / self.std
            return torch.softmax(self.net(x), dim=-1)

    return Wrapped().eval()


def with_floraedge_metadata(src: Path, dst: Path, spec: PreprocessSpec, output: str) -> Path:
    """The graph of ``src`` with FloraEdge's metadata embedded, as `floraedge export` writes it."""
    model = onnx.load(str(src))
    for key, value in (
        (SPEC_KEY, spec.to_json()),
        (LABELS_KEY, json.dumps(LABELS)),
        (INFO_KEY, json.dumps({"format": "onnx", "precision": "fp32", "output": output})),
    ):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst


def litert_file(module, path: Path) -> Path:
    import litert_torch
    import torch

    nhwc = litert_torch.to_channel_last_io(module, args=[0])
    litert_torch.convert(nhwc, (torch.zeros(1, SIZE, SIZE, 3),)).export(str(path))
    return path


def uint8_input_file(fp32: Path, path: Path, photos: Path) -> Path:
    """ai-edge-quantizer's full-integer recipe with a uint8 INPUT, calibrated on the photos as (pixel - 127.5) /
    127.5, whose range [-1, 1] one pixel spans exactly: the file's input quantization is then the pixel itself."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe

    qt = quantizer.Quantizer(str(fp32))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    config = qtyping.TensorQuantizationConfig
    for edge in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # MediaPipe refuses int8 ones
        qt.update_quantization_recipe(
            regex=".*",
            operation_name=edge,
            op_config=qtyping.OpQuantizationConfig(
                activation_tensor_config=config(num_bits=8, symmetric=False, dtype=qtyping.TensorDataType.UINT),
                weight_tensor_config=config(num_bits=8, symmetric=True),
                compute_precision=qtyping.ComputePrecision.INTEGER,
            ),
        )
    name = Interpreter(model_path=str(fp32)).get_signature_list()["serving_default"]["inputs"][0]
    from edge_runtime.preprocess import preprocess, read_image_bgr

    samples = [preprocess(read_image_bgr(p), HALF) for p in sorted(photos.iterdir())]
    samples[0][0, 0, 0], samples[0][0, 0, 1] = -1.0, 1.0  # the exact ends of the range
    calibration = qt.calibrate({"serving_default": [{name: x} for x in samples]}, num_threads=1)
    qt.quantize(calibration, enable_progress_report=False).export_model(str(path), overwrite=True)
    return path


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    """The foreign files, the FloraEdge-way reference, real photos and a labels file, in one folder each."""
    pytest.importorskip("torch")
    import torch

    from export.tflite_metadata import add_metadata

    root = tmp_path_factory.mktemp("foreign")
    files = {"photos": real_photos(root / "photos")}
    net = torchvision_net(files["photos"])
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    files["labels"] = root / "labels.txt"
    for name in ("plain", "bgr", "reference", "std", "uint8"):
        (root / name).mkdir()
    zeros = torch.zeros(1, 3, SIZE, SIZE)
    files["plain"] = root / "plain" / "mobilenet_v3_small.onnx"  # a user's plain export: logits, no metadata
    torch.onnx.export(net, (zeros,), str(files["plain"]), input_names=["input"], output_names=["logits"], dynamo=False)
    files["reference"] = with_floraedge_metadata(
        files["plain"], root / "reference" / "model_fp32.onnx", IMAGENET, "logits"
    )
    files["bgr"] = root / "bgr" / "bgr_255_nhwc.onnx"
    nhwc = torch.zeros(1, SIZE, SIZE, 3)
    torch.onnx.export(wrapped(net, "bgr-255-nhwc"), (nhwc,), str(files["bgr"]), input_names=["pixels"], dynamo=False)
    half = litert_file(wrapped(net, "half"), root / "std" / "converted.tflite")  # the converter's file: no metadata
    files["std"] = add_metadata(  # the standard metadata only (no floraedge.json), as Model Maker writes it
        half,
        root / "std" / "mobilenet_v3_small.tflite",
        labels=LABELS,
        mean=(127.5,) * 3,
        std=(127.5,) * 3,
        name="mobilenet_v3_small",
        description="A classifier from another tool.",
    )
    small = litert_file(wrapped(small_net(files["photos"]), "half"), root / "uint8" / "small.tflite")
    quantized = uint8_input_file(small, root / "uint8" / "quantized.tflite", files["photos"])
    for name, path in (("small", small), ("uint8", quantized)):  # the uint8 file and its float original
        files[name] = add_metadata(
            path,
            root / "uint8" / f"small_{name}.tflite",
            labels=LABELS,
            mean=(127.5,) * 3,
            std=(127.5,) * 3,
            name=f"small {name}",
            description="A classifier from another tool.",
        )
        path.unlink()
    half.unlink()
    return files


@pytest.fixture(scope="module")
def reference(foreign, tmp_path_factory) -> list[dict]:
    """`classify --json` of the FloraEdge-way file: what every foreign file must give."""
    import contextlib
    import io

    out = io.StringIO()  # a module fixture has no capfd
    with contextlib.redirect_stdout(out):
        assert (
            main(["classify", "--model", str(foreign["reference"]), "--json", "--top-k", "5", str(foreign["photos"])])
            == 0
        )
    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(set(top1(results))) >= 3, top1(results)  # the top-1 follows the image: agreement below means something
    return results


@pytest.mark.torch
@pytest.mark.slow
def test_a_tflite_with_only_standard_metadata_runs_with_no_option(foreign, reference, capfd):
    found = inspect_json(foreign["std"], capfd)
    assert found["input"]["shape"] == [1, SIZE, SIZE, 3] and found["input"]["dtype"] == "float32"
    assert {k: found["sources"][k] for k in ("mean", "std", "color_order", "labels")} == dict.fromkeys(
        ("mean", "std", "color_order", "labels"), STANDARD
    )
    assert found["sources"]["crop_size"] == found["sources"]["layout"] == MODEL  # from the input shape
    assert found["output"] == {"scores": len(LABELS), "kind": "probabilities", "source": MODEL}  # its softmax
    np.testing.assert_allclose(found["spec"]["mean"], HALF.mean, rtol=1e-6)
    assert found["labels"]["first"] == LABELS and found["notes"] == []
    results = classify_json(foreign["std"], foreign["photos"], capfd)
    assert top1(results) == top1(reference)
    np.testing.assert_allclose(scores(results), scores(reference), atol=2e-3)


@pytest.mark.torch
@pytest.mark.slow
def test_mediapipe_reads_the_standard_metadata_file_as_the_runtime_does(foreign, tmp_path):
    if not any((REAL_DATA / "jpg").glob("*.jpg")):  # noise pictures: no int8 grid or resize tolerance holds for them
        pytest.skip(f"real data not present at {REAL_DATA}")
    from edge_runtime.preprocess import read_image_bgr
    from tests.conftest import mediapipe_vs_runtime

    images = [read_image_bgr(p) for p in sorted(foreign["photos"].iterdir())]
    compared = mediapipe_vs_runtime(foreign["std"], images, tmp_path)
    assert compared["agreement"] == 1.0 and compared["max_score_diff"] < 1e-3, compared
    (tmp_path / "uint8").mkdir()
    compared = mediapipe_vs_runtime(foreign["uint8"], images, tmp_path / "uint8")
    # MediaPipe feeds a uint8 model the pixel itself; the runtime quantizes (pixel - 127.5) / 127.5 with the
    # file's scale (0.0078 here, not exactly 1/127.5): inputs one level apart at most, so scores within a few
    # output steps (1/256 each), and a near tie may flip
    assert compared["agreement"] >= 7 / 8 and compared["max_score_diff"] < 0.05, compared


@pytest.mark.torch
@pytest.mark.slow
def test_a_uint8_input_tflite_takes_its_quantization_from_the_file(foreign, capfd):
    if not any((REAL_DATA / "jpg").glob("*.jpg")):  # noise pictures: no int8 grid or resize tolerance holds for them
        pytest.skip(f"real data not present at {REAL_DATA}")
    found = inspect_json(foreign["uint8"], capfd)
    assert found["input"]["dtype"] == "uint8"
    scale, zero_point = found["input"]["quantization"]
    assert scale == pytest.approx(2 / 255, rel=0.02) and abs(zero_point - 127.5) <= 1  # calibrated on [-1, 1]
    assert found["sources"]["mean"] == STANDARD and found["output"]["kind"] == "probabilities"
    results = classify_json(foreign["uint8"], foreign["photos"], capfd)
    original = classify_json(foreign["small"], foreign["photos"], capfd)  # the same weights in float32
    assert len(set(top1(original))) >= 3, top1(original)
    agree = np.mean(np.array(top1(results)) == np.array(top1(original)))
    assert agree >= 0.75, (top1(results), top1(original))  # int8 inside: a close call may flip
    wrong = classify_json(foreign["uint8"], foreign["photos"], capfd, "--mean", "0", "--std", "1")
    assert np.abs(scores(wrong) - scores(results)).max() > 0.05  # the comparison would notice a wrong input scale


@pytest.mark.torch
@pytest.mark.slow
def test_a_plain_torchvision_onnx_runs_once_told_how(foreign, reference, capfd, tmp_path):
    plain, photos = foreign["plain"], foreign["photos"]
    one_line_error(["classify", "--model", plain, photos], capfd, "carries no preprocessing spec")
    told = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--output", "logits"]
    told += ["--labels", foreign["labels"]]
    results = classify_json(plain, photos, capfd, *told)
    assert top1(results) == top1(reference)
    np.testing.assert_allclose(scores(results), scores(reference), atol=1e-4)

    spec_file = tmp_path / "spec.json"  # the spec.json the project writes, as one --spec
    spec_file.write_text(IMAGENET.to_json())
    by_spec = classify_json(
        plain, photos, capfd, "--spec", spec_file, "--output", "logits", "--labels", foreign["labels"]
    )
    assert top1(by_spec) == top1(reference)

    found = inspect_json(plain, capfd, *told, "--write-sidecar")  # then later commands need no options
    assert found["sources"]["mean"] == found["sources"]["labels"] == found["sources"]["output"] == FLAGS
    assert Path(found["sidecar"]) == plain.with_name(plain.name + ".json")
    try:
        later = classify_json(plain, photos, capfd)
        assert top1(later) == top1(reference)
        assert inspect_json(plain, capfd)["sources"]["mean"] == SIDECAR
    finally:
        Path(found["sidecar"]).unlink()


@pytest.mark.torch
@pytest.mark.slow
def test_a_bgr_0_255_nhwc_onnx_runs_with_its_options(foreign, reference, capfd):
    bgr, photos = foreign["bgr"], foreign["photos"]
    told = ["--color-order", "BGR", "--value-range", "0-255", "--labels", foreign["labels"], "--resize-size", "73"]
    found = inspect_json(bgr, capfd, *told)
    assert found["spec"]["layout"] == "NHWC" and found["sources"]["layout"] == MODEL
    assert found["output"]["kind"] == "probabilities" and found["output"]["source"] == MODEL
    results = classify_json(bgr, photos, capfd, *told)
    assert top1(results) == top1(reference)
    np.testing.assert_allclose(scores(results), scores(reference), atol=1e-4)
    as_rgb = classify_json(bgr, photos, capfd, *[t for t in told if t not in ("--color-order", "BGR")])
    assert np.abs(scores(as_rgb) - scores(reference)).max() > 0.01  # the colour order matters: it was applied


@pytest.mark.torch
@pytest.mark.slow
def test_opencv_dnn_runs_a_plain_onnx_with_the_same_options(foreign, reference):
    overrides = ModelOverrides(mean=IMAGENET.mean, std=IMAGENET.std, output="logits", labels=foreign["labels"])
    backend = load(foreign["plain"], "opencv", overrides=overrides)  # OpenCV reads no shape: the file's walk does
    assert backend.info.spec.crop_size == SIZE and backend.info.sources["crop_size"] == MODEL


# ---------------------------------------------------------------- the rules, on tiny files (torch-free)


@pytest.fixture
def tiny(tmp_path) -> dict[str, Path]:
    import cv2

    (tmp_path / "bare").mkdir()
    files = {
        "bare": tiny_onnx(tmp_path / "bare" / "model.onnx", embed=False),
        "embedded": tiny_onnx(tmp_path / "model_fp32.onnx"),
        "labels": tmp_path / "labels.txt",
        "five": tmp_path / "five.txt",
        "photo": tmp_path / "photo.jpg",
    }
    files["labels"].write_text("a\nb\nc\nd\n")
    files["five"].write_text("a\nb\nc\nd\ne\n")
    cv2.imwrite(str(files["photo"]), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return files


TOLD = ["--mean", "0.5", "--std", "0.25", "--output", "logits"]


def test_a_file_that_says_nothing_is_refused_with_one_line_naming_the_options(tiny, capfd):
    line = one_line_error(["classify", "--model", tiny["bare"], tiny["photo"]], capfd, "carries no preprocessing spec")
    assert all(option in line for option in ("--spec FILE", "--mean", "--value-range", "--output", "--labels"))
    line = one_line_error(["inspect", tiny["bare"], "--mean", "0.5"], capfd, "does not say")
    assert "--output" in line and "--mean" not in line.split("does not say")[1]  # only what is missing


def test_labels_whose_count_differs_from_the_outputs_are_one_line_and_nothing_is_written(tiny, capfd):
    argv = ["inspect", tiny["bare"], *TOLD, "--labels", tiny["five"], "--write-sidecar"]
    one_line_error(argv, capfd, "5 labels but the model has 4 outputs (the labels come from flags)")
    assert sorted(p.name for p in tiny["bare"].parent.iterdir()) == ["model.onnx"]  # no sidecar, no temp file
    one_line_error(
        ["classify", "--model", tiny["embedded"], "--labels", tiny["five"], tiny["photo"]], capfd, "5 labels"
    )


def test_flags_win_over_the_files_metadata_and_the_report_says_so(tiny, capfd):
    code, out, err = run_cli(["classify", "--model", tiny["embedded"], "--color-order", "BGR", tiny["photo"]], capfd)
    assert code == 0 and "note: color_order: BGR (flags) replaces RGB (embedded)" in err, err
    found = inspect_json(tiny["embedded"], capfd, "--color-order", "BGR", "--output", "probabilities")
    assert found["spec"]["color_order"] == "BGR" and found["sources"]["color_order"] == FLAGS
    assert found["sources"]["mean"] == EMBEDDED and found["output"]["kind"] == "probabilities"
    assert found["notes"] == ["color_order: BGR (flags) replaces RGB (embedded)"]  # output: the file did not say
    code, out, err = run_cli(["inspect", tiny["embedded"], "--color-order", "BGR"], capfd)
    assert code == 0 and "color_order   BGR" in out and "<- your options" in out and "replaces RGB" in out


def test_a_spec_that_does_not_match_the_input_is_one_line(tiny, capfd, tmp_path):
    spec = tmp_path / "spec48.json"
    spec.write_text(PreprocessSpec(crop_size=48, resize_size=55).to_json())
    argv = ["classify", "--model", tiny["bare"], "--spec", spec, "--output", "logits", tiny["photo"]]
    line = one_line_error(argv, capfd, "does not match the model")
    assert "[1, 3, 48, 48]" in line and "crop_size from flags" in line
    one_line_error(["inspect", tiny["bare"], *TOLD, "--layout", "NHWC"], capfd, "does not match the model")
    (tmp_path / "partial.json").write_text('{"mean": [0.5, 0.5, 0.5], "typo": 1}')
    one_line_error(["inspect", tiny["bare"], "--spec", tmp_path / "partial.json"], capfd, "unknown fields ['typo']")


def test_bad_option_values_are_one_line(tiny, capfd):
    base = ["inspect", tiny["bare"], "--output", "logits"]
    one_line_error([*base, "--mean", "127,127,127"], capfd, "add --value-range 0-255")
    one_line_error([*base, "--mean", "0.5,0.5"], capfd, "1 or 3 comma-separated values")
    one_line_error([*base, "--mean", "0.5", "--std", "0"], capfd, "must be positive")
    one_line_error([*base, "--value-range", "0-100"], capfd, "invalid choice")
    one_line_error([*base, "--mean", "0.5", "--labels", tiny["bare"].parent / "missing.txt"], capfd, "missing.txt")


def test_a_partial_spec_file_takes_the_rest_from_the_model(tiny, capfd, tmp_path):
    (tmp_path / "partial.json").write_text('{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}')
    found = inspect_json(tiny["bare"], capfd, "--spec", tmp_path / "partial.json", "--output", "logits")
    assert found["spec"]["crop_size"] == 32 and found["sources"]["crop_size"] == MODEL
    assert found["sources"]["mean"] == FLAGS and found["sources"]["resize_size"] == "default"
    assert found["labels"]["first"][0] == "class_0"


def test_value_range_alone_means_plain_pixels(tiny):
    info = load(tiny["bare"], overrides=ModelOverrides(value_range="0-255", output="logits")).info
    assert info.spec.mean == (0.0,) * 3 and info.spec.std == pytest.approx((1 / 255,) * 3)
    told = ModelOverrides(value_range="0-255", mean=(127.5,), std=(127.5,), output="logits")
    info = load(tiny["bare"], overrides=told).info  # mean and std in the units of the range
    assert info.spec.mean == pytest.approx((0.5,) * 3) and info.spec.std == pytest.approx((0.5,) * 3)


def test_write_sidecar_is_atomic_and_refused_where_embedded_metadata_would_win(tiny, capfd):
    one_line_error(["inspect", tiny["embedded"], "--write-sidecar"], capfd, "a sidecar would be ignored")
    assert not tiny["embedded"].with_name("model_fp32.onnx.json").exists()
    code, out, err = run_cli(["inspect", tiny["bare"], *TOLD, "--labels", tiny["labels"], "--write-sidecar"], capfd)
    assert code == 0, err
    assert sorted(p.name for p in tiny["bare"].parent.iterdir()) == ["model.onnx", "model.onnx.json"]  # no temp file
    info = load(tiny["bare"]).info  # no options: the sidecar says it all
    assert info.labels == tuple("abcd") and info.spec.mean == (0.5,) * 3 and info.sources["output"] == SIDECAR


def test_an_onnx_that_ends_in_a_softmax_needs_no_output_option(tmp_path):
    path = tiny_onnx(tmp_path / "p.onnx", embed=False, output="probabilities")
    info = load(path, overrides=ModelOverrides(mean=(0.5,), std=(0.25,))).info
    assert info.output == "probabilities" and info.sources["output"] == MODEL
    with pytest.raises(MetadataError, match="logits or probabilities"):
        load(tiny_onnx(tmp_path / "l.onnx", embed=False), overrides=ModelOverrides(mean=(0.5,), std=(0.25,)))


@pytest.mark.parametrize("command", ["classify", "run", "serve", "inspect"])
def test_every_model_command_takes_the_same_options(command, tmp_path):
    from edge_runtime.foreign import OVERRIDE_OPTIONS
    from floraedge import build_parser

    argv = {"classify": ["--model", "m.onnx", "x.jpg"], "run": ["--model", "m.onnx"], "serve": ["--model", "m.onnx"]}
    given = ["--labels", "l.txt", "--spec", "s.json", "--input-size", "224", "--resize-size", "256"]
    given += ["--interpolation", "bicubic", "--mean", "0.5", "--std", "0.5,0.5,0.5", "--color-order", "BGR"]
    given += ["--layout", "NHWC", "--value-range", "0-255", "--output", "probabilities"]
    args = build_parser().parse_args([command, *argv.get(command, ["m.onnx"]), *given])
    overrides = ModelOverrides.of(args.binding.config(args))
    assert overrides == ModelOverrides(
        labels=Path("l.txt"),
        spec=Path("s.json"),
        input_size=224,
        resize_size=256,
        interpolation="bicubic",
        mean=(0.5,),
        std=(0.5, 0.5, 0.5),
        color_order="BGR",
        layout="NHWC",
        value_range="0-255",
        output="probabilities",
    )
    assert len(OVERRIDE_OPTIONS) == len(given) // 2


def test_a_space_of_a_foreign_model_carries_its_sidecar(tiny, capfd, tmp_path):
    import subprocess
    import sys

    code, _, err = run_cli(["inspect", tiny["bare"], *TOLD, "--labels", tiny["labels"], "--write-sidecar"], capfd)
    assert code == 0, err
    out = tmp_path / "space"
    code, _, err = run_cli(["space", "--model", tiny["bare"], "--out", out], capfd)
    assert code == 0 and (out / "model.onnx.json").is_file(), err
    check = (
        "import sys; sys.path.insert(0, sys.argv[1]); from starlette.testclient import TestClient; import app\n"
        "c = TestClient(app.app, base_url='http://localhost'); print(c.get('/v1/model').json()['labels'])"
    )
    result = subprocess.run([sys.executable, "-c", check, str(out)], capture_output=True, text=True, cwd=out)
    assert result.stdout.strip() == "['a', 'b', 'c', 'd']", result.stderr[-2000:]


def test_a_uint8_input_onnx_takes_plain_pixels(tmp_path):
    """An ONNX file that takes uint8 pixels (NHWC, as a camera gives them) gets them rounded, in their range."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),  # mean B, G, R or R, G, B
        ],
        "uint8_input",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "pixels.onnx"))
    told = ModelOverrides(value_range="0-255", output="logits", resize_size=8)
    backend = load(tmp_path / "pixels.onnx", overrides=told)
    assert backend.info.spec.layout == "NHWC" and backend.input_details["dtype"] == "uint8"
    from edge_runtime.preprocess import preprocess

    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 2] = 200  # red, in OpenCV's BGR order
    out = backend.predict(preprocess(frame, backend.info.spec))
    np.testing.assert_allclose(out, [[200, 0, 0]])  # RGB, the pixel values themselves
    with pytest.raises(MetadataError, match="no preprocessing spec"):
        load(tmp_path / "pixels.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "opencv", "openvino"])
@pytest.mark.parametrize("fixed", [1, 4])
def test_a_fixed_batch_onnx_runs_any_number_of_images(backend, fixed, tmp_path):
    """A plain torch.onnx.export file takes exactly the batch it was traced with (usually 1): the gate, the
    calibration and the bench hand it 32 images at once, and each image gets its own output, as with a free
    batch (a fixed batch of 4 given 10 images: the last slice padded, the padding's outputs dropped)."""
    free = load(tiny_onnx(tmp_path / "free.onnx"), backend)
    pinned = load(tiny_onnx(tmp_path / "fixed.onnx", batch=fixed), backend)
    assert pinned.batch_size == fixed and free.batch_size is None
    batch = np.random.default_rng(0).normal(size=(10, 3, 32, 32)).astype(np.float32)
    expected = free.predict(batch)
    assert expected.shape == (10, 4)
    np.testing.assert_allclose(pinned.predict(batch), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pinned.predict(batch[:fixed]), expected[:fixed], rtol=1e-5, atol=1e-6)


def test_serve_takes_the_options_and_reports_the_sources(tiny):
    from starlette.testclient import TestClient

    from edge_runtime.serve.app import ServeConfig, create_app

    config = ServeConfig(model=tiny["bare"], mean=(0.5,), std=(0.25,), output="logits", labels=tiny["labels"])
    with TestClient(create_app(config), base_url="http://localhost") as client:
        described = client.get("/v1/model").json()
        assert described["labels"] == list("abcd") and described["spec"]["mean"] == [0.5] * 3
        assert described["sources"]["mean"] == described["sources"]["labels"] == FLAGS
        assert described["sources"]["crop_size"] == MODEL and described["output"] == "logits"
        top = client.post("/v1/classify", content=tiny["photo"].read_bytes(), headers={"content-type": "image/jpeg"})
        assert top.status_code == 200 and top.json()["top"][0]["label"] in "abcd"
