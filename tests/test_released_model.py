"""The committed release (models/oxford102-lite0/): complete, small, self-consistent, the only model files
in the repository, and loaded by MediaPipe's ImageClassifier with the runtime's top-1."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from benchmarks.pipelines.demo import real_val_images
from benchmarks.pipelines.release import DEFAULT_OUT, RELEASE_FILES
from edge_runtime.backends import load
from edge_runtime.metadata import PROBABILITIES
from edge_runtime.preprocess import read_image_bgr
from prepare.categories import class_names
from tests.conftest import REAL_DATA, REPO, mediapipe_vs_runtime, square_photo

RELEASE = REPO / DEFAULT_OUT
MODEL_SUFFIXES = (".tflite", ".onnx", ".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".h5", ".pb")


def test_release_folder_is_complete_small_and_matches_its_card():
    card = json.loads((RELEASE / "model_card.json").read_text())
    assert sorted(p.name for p in RELEASE.iterdir()) == sorted(
        [*RELEASE_FILES, "labels.txt", "MODEL_CARD.md", "model_card.json"]
    )
    assert sum(p.stat().st_size for p in RELEASE.iterdir()) <= 12 * 2**20
    assert (RELEASE / "model_int8.tflite").stat().st_size <= 4.5 * 2**20
    assert (RELEASE / "labels.txt").read_text().splitlines() == list(class_names())
    for name in RELEASE_FILES:
        data = (RELEASE / name).read_bytes()
        assert card["files"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
        info = load(RELEASE / name).info
        assert list(info.labels) == list(class_names()) and info.output == PROBABILITIES
        assert info.spec.crop_size == card["recipe"]["train_config"]["img_size"]
    assert not card["dirty"], "the release was cut from a tree with uncommitted changes"


def test_no_other_model_file_is_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    models = [p for p in tracked.splitlines() if p.lower().endswith(MODEL_SUFFIXES)]
    assert sorted(models) == sorted(f"{DEFAULT_OUT}/{name}" for name in RELEASE_FILES)


@pytest.mark.slow
def test_mediapipe_runs_the_released_int8_file_with_the_runtimes_top1(tmp_path):
    """All 1020 real val images where the dataset is here (the release has seen them: this measures
    agreement, not accuracy); a real or synthetic photo and its mirror images otherwise."""
    model = RELEASE / "model_int8.tflite"
    if (REAL_DATA / "setid.mat").is_file():
        images = [read_image_bgr(path) for path, _ in real_val_images(REAL_DATA, 1020)]
    else:
        photo = read_image_bgr(square_photo(tmp_path / "photo.png", 256))
        images = [photo, photo[:, ::-1].copy(), photo[::-1].copy()]
    found = mediapipe_vs_runtime(model, images, tmp_path)
    print(f"MediaPipe vs runtime on {len(images)} images: top-1 agreement {found['agreement']:.4f}, "
          f"largest top-1 score difference {found['max_score_diff']:.4f}")  # fmt: skip
    assert found["agreement"] >= 0.99, found
    assert found["max_score_diff"] <= 2e-2, found


@pytest.mark.realdata
def test_demo_ends_with_the_released_model_on_real_val_images(tmp_path):
    if not (REAL_DATA / "setid.mat").is_file():
        pytest.skip(f"real data not present at {REAL_DATA}")
    from benchmarks.pipelines.demo import released_model

    rows = released_model(tmp_path, {})
    assert len(rows) == 8 and all(0 < r["probability"] <= 1 for r in rows)
    assert json.loads((tmp_path / "released_model.json").read_text()) == rows
    assert sum(r["predicted"] == r["true"] for r in rows) >= 7  # val images the release was trained on
