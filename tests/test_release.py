"""`floraedge release` end to end on a synthetic release at toy settings: every step, the card, the resume."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from benchmarks.pipelines.release import ReleaseConfig, recorded_precision, training_precision
from edge_runtime.backends import load
from floraedge import main as cli_main


@pytest.mark.slow
def test_release_builds_a_folder_a_device_loads_and_reuses_finished_steps(tmp_path, capsys):
    from prepare.synthetic import make_synthetic_release

    source = make_synthetic_release(
        tmp_path / "raw", num_classes=10, train_per_class=10, val_per_class=4, test_per_class=2, size=64, seed=0
    )
    work, out, png = tmp_path / "work", tmp_path / "models" / "toy", tmp_path / "example.png"
    args = ["release", "--source", str(source), "--work", str(work), "--out", str(out), "--img-size", "32",
            "--epochs", "1", "--max-drop", "100", "--example", "image_00002.jpg", "--example-png", str(png)]  # fmt: skip
    assert cli_main(args) == 0

    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model_int8.tflite", "model_int8.onnx", "labels.txt", "MODEL_CARD.md", "model_card.json"]
    )
    assert not list(out.parent.glob(".*")), "the staging folder was left behind"
    card = json.loads((out / "model_card.json").read_text())
    labels = (out / "labels.txt").read_text().splitlines()
    assert len(labels) == 102 and card["recipe"]["commands"]["trainval"].startswith("floraedge train")
    assert "--train-splits train,val --no-val" in card["recipe"]["commands"]["trainval"]
    assert f"--precision {training_precision('auto')} " in card["recipe"]["commands"]["trainval"]  # what ran
    assert card["val"]["n"] == 40 and set(card["val"]["files"]) == {"model_int8.tflite", "model_int8.onnx"}
    assert card["reproducibility"] is None  # nothing was there to compare with
    assert all(c["true"] != c["predicted_as"] for c in card["val"]["most_confused_int8_tflite"])
    for name in ("model_int8.tflite", "model_int8.onnx"):
        model = load(out / name)
        assert list(model.info.labels) == labels and model.info.spec.crop_size == 32
        assert card["files"][name]["bytes"] == (out / name).stat().st_size
    assert cv2.imread(str(png)) is not None
    capsys.readouterr()

    # A second run reuses every finished step and compares the new folder with the one it replaces.
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "train-split: already done, reused" in printed and "export-trainval: already done, reused" in printed
    again = json.loads((out / "model_card.json").read_text())
    assert again["reproducibility"] == {"identical_files": True}  # nothing re-ran: not called a reproduction

    # Another export option (here the gate) makes the exports again from the same trainings.
    assert cli_main([*args, "--max-drop", "99"]) == 0
    printed = capsys.readouterr().out
    assert "trainval: already done, reused" in printed and "export-trainval: done" in printed

    # A finished training is not reused for a command that asks for other options: refused, nothing changed.
    again = json.loads((out / "model_card.json").read_text())
    assert cli_main([*args, "--seed", "1"]) != 0
    refused = capsys.readouterr().err
    assert "train-split finished with other options" in refused and "--seed 0 -> 1" in refused
    assert json.loads((out / "model_card.json").read_text()) == again

    # A re-cut whose int8 file differs (here: trained and calibrated with another seed) is compared image by
    # image; the exports of the trainings it replaced are made again, not reused.
    for step in ("train-split", "trainval"):
        shutil.rmtree(work / step)
    assert cli_main([*args, "--seed", "1", "--note", "seed 1"]) == 0
    assert "export-trainval: done" in capsys.readouterr().out
    third = json.loads((out / "model_card.json").read_text())
    assert third["reproducibility"]["images"] == 140 and 0 <= third["reproducibility"]["same_top1"] < 1  # retrained
    repro = third["reproducibility"]
    assert len(repro["differing"]) == min(50, round(140 * (1 - repro["same_top1"])))  # the card lists 50 at most
    assert all(d["old"] != d["new"] and d["true"] in labels for d in repro["differing"])
    assert 0 <= repro["old_correct"] <= 1 and 0 <= repro["new_correct"] <= 1
    assert f"right on {repro['old_correct']:.2%} before" in (out / "MODEL_CARD.md").read_text()
    assert "This cut: seed 1" in (out / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize(
    ("cuda", "native_bf16", "expected"), [(True, True, "fp16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_auto_precision_is_made_concrete_for_the_card(monkeypatch, cuda, native_bf16, expected):
    import torch

    from train import engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native_bf16)
    assert training_precision("auto") == expected
    assert training_precision("fp32") == "fp32"  # a choice is kept as given


def test_auto_precision_keeps_the_one_a_started_training_runs_at(tmp_path):
    """Another machine may resolve auto differently; a release resumed there goes on at the recorded precision."""
    config = ReleaseConfig(work=str(tmp_path))
    assert recorded_precision(config) is None
    (tmp_path / "trainval").mkdir()
    (tmp_path / "trainval" / "config.json").write_text(json.dumps({"precision": "bf16"}))
    assert recorded_precision(config) == "bf16"
