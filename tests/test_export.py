"""`floraedge export`: every row of the format table round-trips through its own runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge_runtime.backends import load
from edge_runtime.errors import FloraEdgeError
from export import converters
from export.calibration import CalibrationError, balanced_sample
from export.exporter import ExportConfig, export_all
from export.formats import FORMATS, select
from prepare.categories import class_names
from train.checkpoint import CheckpointError, load_bundle, model_from_bundle

FAST = dict(calib_min=8, calib_n=32, verify_n=16)


@pytest.fixture(scope="session")
def exported(tiny_checkpoint, tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "all"
    results = export_all(
        ExportConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared), out=str(out), allow_drop=True, **FAST)
    )
    return out, {r["name"]: r for r in results}


@pytest.mark.slow
@pytest.mark.parametrize("row", FORMATS, ids=[f.name for f in FORMATS])
def test_every_format_round_trips_through_its_runtime(exported, tiny_checkpoint, tiny_prepared, row):
    out, results = exported
    result = results[row.name]
    assert "error" not in result, result.get("traceback")
    backend = load(out / row.filename, row.runtime)
    assert backend.info.labels == class_names() and backend.info.info["precision"] == row.precision
    spec = backend.info.spec
    assert spec.layout == ("NHWC" if row.format == "tflite" else "NCHW")
    model, torch_spec = model_from_bundle(load_bundle(tiny_checkpoint))
    assert spec.replace(layout="NCHW") == torch_spec  # the spec travels unchanged
    from export.calibration import verification_set

    batch, _, _ = verification_set(tiny_prepared, torch_spec, split="val", limit=16)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    feed = batch.transpose(0, 2, 3, 1) if spec.layout == "NHWC" else batch
    got = np.concatenate([backend.predict(feed[i : i + 1]) for i in range(len(feed))])
    agreement = (got.argmax(1) == expected.argmax(1)).mean()
    if row.logit_atol is not None:
        assert np.abs(got - expected).max() <= row.logit_atol and agreement == 1.0
    else:
        assert agreement >= 0.75, agreement  # quantized: close, not identical
        assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.9
    assert (out / f"{row.filename}.json").is_file()


@pytest.mark.slow
def test_sizes_and_cards(exported):
    out, results = exported
    sizes = {name: r["bytes"] for name, r in results.items()}
    assert sizes["onnx-int8"] < 0.35 * sizes["onnx-fp32"] and sizes["tflite-int8"] < 0.35 * sizes["tflite-fp32"]
    assert sizes["onnx-fp16"] < 0.6 * sizes["onnx-fp32"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["calibration"]["n"] == 32 and card["calibration"]["classes"] == 4
    assert {f["name"] for f in card["files"]} == {f.name for f in FORMATS}
    assert "| `model_int8.tflite` | int8 |" in (out / "MODEL_CARD.md").read_text()
    assert (out / "labels.txt").read_text().splitlines() == list(class_names())


def scrambled_fp16(base, dest, ctx):
    """A deliberately broken converter: the classifier's weights are shuffled."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(base))
    for init in model.graph.initializer:
        if init.name.endswith("_fc.weight") or init.name.endswith("fc.weight"):
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.random.default_rng(0).permutation(w), init.name))
    onnx.save(model, str(dest))


def test_the_gate_refuses_a_broken_model(tiny_checkpoint, tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setitem(converters.DERIVE, ("onnx", "fp16"), scrambled_fp16)
    results = export_all(
        ExportConfig(
            checkpoint=str(tiny_checkpoint),
            data=str(tiny_prepared),
            out=str(tmp_path / "x"),
            formats=("onnx",),
            precisions=("fp32", "fp16"),
            max_drop=0.0,
            **FAST,
        )
    )
    by_name = {r["name"]: r for r in results}
    assert by_name["onnx-fp32"]["passed"] and (tmp_path / "x" / "model_fp32.onnx").is_file()
    assert not by_name["onnx-fp16"]["passed"] and not (tmp_path / "x" / "model_fp16.onnx").exists()
    assert by_name["onnx-fp16"]["top1_agreement"] < 1.0
    assert not [p.name for p in (tmp_path / "x").iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_failing_format_does_not_lose_the_others(tiny_checkpoint, tiny_prepared, tmp_path, monkeypatch):
    def broken(ctx, dest):
        raise RuntimeError("converter exploded")

    monkeypatch.setitem(converters.BASE_EXPORTERS, "tflite", broken)
    results = export_all(
        ExportConfig(
            checkpoint=str(tiny_checkpoint),
            data=str(tiny_prepared),
            out=str(tmp_path / "x"),
            precisions=("fp32",),
            **FAST,
        )
    )
    by_name = {r["name"]: r for r in results}
    assert by_name["onnx-fp32"]["kept"] and "converter exploded" in by_name["tflite-fp32"]["error"]


def test_calibration_refuses_too_few_images(tiny_checkpoint, tiny_prepared, tmp_path):
    with pytest.raises(CalibrationError, match="fewer than the minimum 100"):
        export_all(
            ExportConfig(
                checkpoint=str(tiny_checkpoint),
                data=str(tiny_prepared),
                out=str(tmp_path / "x"),
                formats=("onnx",),
                precisions=("int8",),
            )
        )


def test_calibration_sample_is_class_balanced():
    rows = [{"class_index": c, "image_id": 10 * c + i} for c in range(5) for i in range(10)]
    picked = balanced_sample(rows, 15, seed=3)
    assert sorted(np.bincount([r["class_index"] for r in picked])) == [3] * 5
    assert picked == balanced_sample(rows, 15, seed=3)


def test_unknown_format_or_precision_lists_the_valid_ones():
    with pytest.raises(FloraEdgeError, match="formats: onnx, tflite; precisions: fp32, fp16, dynamic-int8, int8"):
        select(["coreml"], ["fp32"])
    assert [f.filename for f in select(["tflite"], ["dynamic-int8"])] == ["model_dynamic-int8.tflite"]


def test_existing_output_and_foreign_checkpoint_are_refused(tiny_checkpoint, tiny_prepared, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    with pytest.raises(FloraEdgeError, match="--overwrite"):
        export_all(ExportConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared), out=str(tmp_path / "x")))
    torch.save({"w": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError):
        export_all(
            ExportConfig(checkpoint=str(tmp_path / "foreign.pt"), data=str(tiny_prepared), out=str(tmp_path / "y"))
        )


@pytest.mark.slow
def test_mediapipe_loads_our_exported_tflite_and_agrees_on_top1(exported, tmp_path):
    """MediaPipe's ImageClassifier (own venv) reads our embedded normalization + labels: same top-1 name."""
    from edge_runtime.preprocess import preprocess, read_image_bgr
    from tests.conftest import run_mediapipe, square_photo

    out, _ = exported
    backend = load(out / "model_fp32.tflite")
    size = backend.info.spec.crop_size
    image = square_photo(tmp_path / "flower.png", size)  # already size x size: MediaPipe's stretch == our crop
    same_pixels = backend.info.spec.replace(resize_size=size)  # MediaPipe feeds the whole image, no crop margin
    ours = backend.predict(preprocess(read_image_bgr(image), same_pixels))[0]
    done = run_mediapipe(out / "model_fp32.tflite", image, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    categories = json.loads(done.stdout.strip().splitlines()[-1])["categories"]
    assert categories[0][1] == class_names()[int(ours.argmax())]
    np.testing.assert_allclose(categories[0][2], ours.max(), rtol=1e-3, atol=1e-3)  # raw scores: logits


@pytest.mark.slow
@pytest.mark.realdata
def test_int8_accuracy_drop_on_real_validation_images(tmp_path):
    """A small Lite0 (head trained on the real train split, 128 px) exported to int8: the drop on real val images."""
    from tests.conftest import REAL_DATA

    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    from prepare.build import PrepareConfig, prepare_dataset
    from train.trainer import TrainConfig, train

    data = tmp_path / "flowers"
    prepare_dataset(PrepareConfig(source=REAL_DATA, out=data, cache_size=146))
    train(
        TrainConfig(
            data=str(data),
            out=str(tmp_path / "run"),
            arch="efficientnet_lite0",
            img_size=128,
            epochs=4,
            head_epochs=4,
            workers=0,
            progress=False,
            tta_flip=False,
            patience=0,
        )
    )
    results = export_all(
        ExportConfig(
            checkpoint=str(tmp_path / "run" / "best.pt"),
            data=str(data),
            out=str(tmp_path / "x"),
            precisions=("int8",),
            calib_n=306,
            verify_n=510,
            max_drop=2.0,
            allow_drop=True,
        )
    )
    by_name = {r["name"]: r for r in results}
    for r in results:
        assert r["torch_accuracy"] > 0.5, r  # a model that learned something: the drop means something
        assert r["passed"] == (r["accuracy_drop_points"] <= 2.0), r  # the gate reports what it measured
    # ONNX Runtime QDQ (float output) holds up on this weak (~77%) model, on 510 real val images:
    assert by_name["onnx-int8"]["accuracy_drop_points"] <= 2.0, by_name["onnx-int8"]
    assert by_name["onnx-int8"]["top1_agreement"] >= 0.9, by_name["onnx-int8"]
    # Full-integer TFLite (int8 logits too) lost 6.5 points on this model but 0.2 on the fully trained one
    # (docs/results.md): a known weakness the gate catches (see the closing notes), bounded here.
    assert by_name["tflite-int8"]["accuracy_drop_points"] < 15, by_name["tflite-int8"]


def test_card_says_when_the_verification_images_were_trained_on(tiny_checkpoint, tiny_prepared, tmp_path):
    bundle = load_bundle(tiny_checkpoint)
    bundle["dataset"]["train_splits"] = ["train", "val"]  # the final train+val protocol
    final = tmp_path / "final.pt"
    torch.save(bundle, final)
    out = tmp_path / "out"
    export_all(
        ExportConfig(
            checkpoint=str(final),
            data=str(tiny_prepared),
            out=str(out),
            formats=("onnx",),
            precisions=("fp32",),
            **FAST,
        )
    )
    assert json.loads((out / "model_card.json").read_text())["verification"]["seen_in_training"] is True
    assert "the checkpoint was trained on them" in (out / "MODEL_CARD.md").read_text()
