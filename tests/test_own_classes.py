"""Your own classes downstream of `prepare`: `train --recipe linear`, and the texts every later stage writes
(file descriptions, the serve page, the space README, the release card) come from the dataset, not Oxford-102."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.pipelines.release import DEFAULT_NAME, DEFAULT_OUT, ReleaseConfig, card_markdown, with_folders
from edge_runtime.errors import FloraEdgeError
from tests.conftest import REPO, write_jpeg

# a space, markup that a page must escape, and letters outside ASCII: the class and dataset names a user may bring
CLASSES = ["ripe tomato", "unripe &<b>tomato", "Čerešňa"]
DATASET = "Tomato <i>ripeness</i>"
TITLE = f"{DATASET} classifier (3 classes)"


@pytest.fixture(scope="module")
def own_prepared(tmp_path_factory) -> Path:
    """A class-per-folder tree of real JPEGs, prepared by `floraedge prepare` (split stratified there)."""
    from prepare.build import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / "photos" / name).mkdir(parents=True)
        for i in range(12):
            write_jpeg(root / "photos" / name / f"{i}.jpg", rng, shape=(40 + i, 52))
    config = PrepareConfig(
        source=root / "photos", out=root / "prepared", cache_size=40, workers=1, val_frac=0.25, name=DATASET
    )
    prepare_dataset(config)
    return root / "prepared"


@pytest.fixture(scope="module")
def linear_run(own_prepared, tmp_path_factory) -> Path:
    from train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("linear") / "run"
    config = TrainConfig(
        data=str(own_prepared), out=str(out), recipe="linear", arch="efficientnet_lite0", img_size=32, workers=0
    )
    train(config)
    return out


@pytest.fixture(scope="module")
def own_exports(linear_run, own_prepared, tmp_path_factory) -> Path:
    from export.exporter import ExportConfig, export_all

    out = tmp_path_factory.mktemp("own_exports") / "int8"
    config = ExportConfig(
        checkpoint=str(linear_run / "best.pt"),
        data=str(own_prepared),
        out=str(out),
        precisions=("int8",),
        allow_drop=True,  # noise images: the gate's accuracy says nothing here, the files' contents do
        calib_min=8,
        calib_n=16,
    )
    export_all(config)
    return out


@pytest.mark.torch
def test_the_linear_recipe_computes_training_features_in_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    import torch

    from train import linear

    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(linear, "cpu_has_native_bf16", lambda native=native: native)
        assert linear.feature_dtype("auto", cpu) is expected
    assert linear.feature_dtype("fp32", cpu) is None  # asked for: as train reads it


@pytest.mark.torch
@pytest.mark.slow
def test_the_linear_recipe_writes_a_checkpoint_of_the_datasets_own_classes(linear_run, own_prepared):
    from train.checkpoint import load_bundle
    from train.config import RECIPE_WEIGHT_DECAY, EvaluateConfig
    from train.engine import cpu_has_native_bf16
    from train.evaluate import evaluate_checkpoint

    bundle = load_bundle(linear_run / "best.pt")
    assert bundle["class_names"] == sorted(CLASSES)  # code-point order, names exactly as the folders
    assert bundle["num_classes"] == 3 and bundle["dataset"]["name"] == DATASET
    assert bundle["config"]["recipe"] == "linear"
    # the head was fitted with the linear recipe's own weight decay, and the run says so
    summary = json.loads((linear_run / "summary.json").read_text())
    recorded = (bundle["config"], json.loads((linear_run / "config.json").read_text()), summary)
    assert [r["weight_decay"] for r in recorded] == [RECIPE_WEIGHT_DECAY["linear"]] * 3
    assert RECIPE_WEIGHT_DECAY["linear"] != RECIPE_WEIGHT_DECAY["finetune"]
    assert summary["train_views"] == 2 * len(bundle["dataset"]["trained_images"])  # each image and its mirror
    assert summary["features_precision"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    # the val figures come from the cached features; a real evaluation of the saved checkpoint must agree
    for tta, key in ((False, "val"), (True, "val_tta")):
        evaluation = EvaluateConfig(checkpoint=str(linear_run / "best.pt"), data=str(own_prepared), tta_flip=tta)
        metrics = evaluate_checkpoint(evaluation)
        assert metrics["n"] == summary[key]["n"] > 0
        assert metrics["top1"] == pytest.approx(summary[key]["top1"])
        assert metrics["mean_per_class"] == pytest.approx(summary[key]["mean_per_class"])


@pytest.mark.torch
@pytest.mark.slow
def test_the_linear_checkpoint_exports_and_classifies_with_its_labels_and_the_datasets_name(own_exports, own_prepared):
    import onnx

    from edge_runtime.backends import load
    from export.tflite_metadata import read_metadata

    tflite, onnx_file = own_exports / "model_int8.tflite", own_exports / "model_int8.onnx"
    assert read_metadata(tflite)["description"] == f"{TITLE}, exported by FloraEdge"
    assert onnx.load(str(onnx_file)).doc_string == f"{TITLE}, exported by FloraEdge"
    card = (own_exports / "MODEL_CARD.md").read_text()
    assert f"dataset: {DATASET}" in card and "Oxford" not in card and "102 classes" not in card
    image = next((own_prepared / "cache").rglob("*.jpg"))
    for model in (tflite, onnx_file):
        assert list(load(model).info.labels) == sorted(CLASSES)
        result = subprocess.run(
            [sys.executable, "-m", "floraedge", "classify", "--model", str(model), "--json", str(image)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[0])["top"][0]["label"] in CLASSES


@pytest.mark.torch
@pytest.mark.slow
def test_the_serve_page_and_the_space_readme_name_the_dataset(own_exports, tmp_path):
    from starlette.testclient import TestClient

    from edge_runtime.serve.app import ServeConfig, create_app
    from floraedge import main

    app = create_app(ServeConfig(model=own_exports / "model_int8.onnx"))
    with TestClient(app, base_url="http://localhost") as client:  # the host check answers localhost
        page = client.get("/").text
    assert "<title>FloraEdge: Tomato &lt;i&gt;ripeness&lt;/i&gt; classifier (3 classes)</title>" in page
    assert "<i>" not in page and "flower" not in page.lower()
    assert main(["space", "--model", str(own_exports / "model_int8.tflite"), "--out", str(tmp_path / "space")]) == 0
    assert (tmp_path / "space" / "README.md").read_text().startswith(f"# FloraEdge: {TITLE}\n")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], 0.05),
        (["--recipe", "linear"], 1.0),
        (["--recipe", "linear", "--weight-decay", "0.2"], 0.2),
        (["--weight-decay", "0"], 0.0),
    ],
    ids=["finetune", "linear", "linear, as asked", "finetune, as asked"],
)
def test_each_recipe_has_its_own_weight_decay_unless_one_is_asked_for(args, expected):
    import floraedge
    from edge_runtime.options import config_from_args
    from train.config import weight_decay_of

    argv = ["train", "--data", "d", "--out", "o", *args]
    assert weight_decay_of(config_from_args(floraedge.build_parser().parse_args(argv))) == expected


def test_a_negative_weight_decay_is_refused_in_one_line(capsys):
    import floraedge

    with pytest.raises(SystemExit):
        floraedge.build_parser().parse_args(["train", "--data", "d", "--out", "o", "--weight-decay", "-1"])
    assert "--weight-decay" in capsys.readouterr().err


@pytest.mark.torch
def test_the_linear_recipe_refuses_what_it_cannot_do_in_one_line(own_prepared, tmp_path):
    from train.trainer import TrainConfig, train

    base = dict(data=str(own_prepared), out=str(tmp_path / "r"), recipe="linear", arch="efficientnet_lite0")
    for bad, flag in ((dict(teachers=("t.pt",)), "--teachers"), (dict(ema_epochs=2.0), "--ema-epochs")):
        with pytest.raises(FloraEdgeError, match=flag) as info:
            train(TrainConfig(**base, **bad))
        assert "\n" not in str(info.value)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_the_release_card_of_your_own_data_names_it_and_reports_the_test_split():
    card = json.loads((REPO / "models" / DEFAULT_NAME / "model_card.json").read_text())
    card["name"] = "clothing-lite0"
    card["data"] |= {"dataset": "clothing-dataset-small", "oxford102": False, "num_classes": 10}
    card["recipe"]["commands"] = {"prepare": "floraedge prepare --source photos --out runs/release-clothing-lite0/data"}
    card["val"]["n"] = 341
    card["val"]["most_confused_int8_tflite"] = [{"true": "shirt", "predicted_as": "t-shirt", "images": 3, "of": 29}]
    card["data"]["counts"] = {"train": 3068, "val": 341, "test": 372}
    card["test"] = {"n": 372, "models": {"`model_int8.tflite`": {"top1": 0.81, "mean_per_class": 0.7}}}
    text = card_markdown(card)
    assert text.startswith("# clothing-lite0: clothing-dataset-small classifier (10 classes) (")
    assert "It knows only these 10 classes" in text
    assert "trained on train + val (3409 images)" in text
    assert "| `model_int8.tflite` | 0.8100 | 0.7000 |" in text
    # Oxford-102's class count and test-set size as numbers of their own (a tool version may hold the digits)
    assert "flower" not in text.lower() and not re.search(r"\b(102|6149)\b", text), text


def test_the_oxford_release_card_is_unchanged():
    folder = REPO / "models" / DEFAULT_NAME
    card = json.loads((folder / "model_card.json").read_text())
    assert card_markdown(card) == (folder / "MODEL_CARD.md").read_text()


def test_release_name_sets_the_folders_unless_given_and_must_be_a_folder_name():
    oxford = with_folders(ReleaseConfig())
    assert (oxford.out, oxford.work, oxford.data) == (DEFAULT_OUT, "runs/release", Path("runs/release/flowers"))
    mine = with_folders(ReleaseConfig(source="photos", name="tomatoes-lite0"))
    assert (mine.out, mine.work, mine.data) == (
        "models/tomatoes-lite0",
        "runs/release-tomatoes-lite0",
        Path("runs/release-tomatoes-lite0/data"),
    )
    assert with_folders(ReleaseConfig(name="t", out="elsewhere")).out == "elsewhere"
    for bad in ("../up", "", ".hidden", "a/b", "x" * 65):
        with pytest.raises(FloraEdgeError, match="--name"):
            ReleaseConfig(name=bad)
