"""The synthetic Oxford-102 stand-in: official raw format, reproducible, and really learnable."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from prepare.synthetic import (
    MAX_CLASSES,
    SYNTHETIC_MARKER,
    draw_flower,
    flower_style,
    is_synthetic,
    make_synthetic_release,
)

FILES = ("102flowers.tgz", "imagelabels.mat", "setid.mat")
SMALL = {"num_classes": 4, "train_per_class": 2, "val_per_class": 1, "test_per_class": 3, "size": 32, "seed": 3}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_release(tmp_path_factory.mktemp("synthetic") / "nested" / "raw", **SMALL)


def test_writes_the_official_files_and_marker(release: Path) -> None:
    assert release.name == "raw" and release.parent.name == "nested"  # the folder asked for, parents made
    for name in (*FILES, SYNTHETIC_MARKER):
        assert (release / name).is_file(), name
    marker = (release / SYNTHETIC_MARKER).read_text(encoding="utf-8")
    assert "NOT the real Oxford 102 Flowers" in marker
    for line in ("classes: 4", "train 2, val 1, test 3", "seed: 3", "shorter side 32 px"):
        assert line in marker
    assert not list(release.glob("*.tmp")) and not list(release.glob(".*"))


def test_labels_mat(release: Path) -> None:
    labels = scipy.io.loadmat(release / "imagelabels.mat")["labels"]
    assert labels.shape == (1, 4 * 6) and labels.dtype == np.uint8
    assert labels.min() == 1 and labels.max() == 4
    assert np.bincount(labels.ravel(), minlength=5)[1:].tolist() == [6] * 4
    assert not np.array_equal(labels.ravel(), np.sort(labels.ravel())), "ids are shuffled across classes"


def test_setid_mat(release: Path) -> None:
    labels = scipy.io.loadmat(release / "imagelabels.mat")["labels"].ravel()
    setid = scipy.io.loadmat(release / "setid.mat")
    splits = {key: setid[key] for key in ("trnid", "valid", "tstid")}
    for key, per_class in zip(splits, (2, 1, 3), strict=True):
        ids = splits[key]
        assert ids.dtype == np.uint16 and ids.ndim == 2 and ids.shape[0] == 1, key
        assert ids.shape[1] == 4 * per_class and ids.min() >= 1 and ids.max() <= labels.size, key
        assert np.bincount(labels[ids.ravel() - 1], minlength=5)[1:].tolist() == [per_class] * 4, key
    every = np.concatenate([ids.ravel() for ids in splits.values()])
    assert np.array_equal(np.sort(every), np.arange(1, labels.size + 1)), "disjoint and covering all ids"


def test_archive_members_are_decodable_jpegs(release: Path) -> None:
    with tarfile.open(release / "102flowers.tgz", "r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"jpg/image_{i:05d}.jpg" for i in range(1, 25)]
        shapes = set()
        for member in members:
            assert member.isfile() and re.fullmatch(r"jpg/image_\d{5}\.jpg", member.name)
            assert member.mtime == 0 and member.uid == 0 and member.gid == 0
            data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            assert image is not None and image.ndim == 3 and image.shape[2] == 3, member.name
            assert min(image.shape[:2]) == 32 and 32 <= max(image.shape[:2]) <= round(32 * 1.4)
            shapes.add(image.shape)
    assert len(shapes) > 1, "sizes vary like the real set"


def test_same_seed_gives_identical_bytes(tmp_path: Path, release: Path) -> None:
    again = make_synthetic_release(tmp_path, **SMALL)
    for name in (*FILES, SYNTHETIC_MARKER):
        assert (again / name).read_bytes() == (release / name).read_bytes(), name
    other = make_synthetic_release(tmp_path / "other", **{**SMALL, "seed": 4})
    assert (other / "102flowers.tgz").read_bytes() != (release / "102flowers.tgz").read_bytes()


def test_every_class_has_a_unique_style() -> None:
    styles = [flower_style(k) for k in range(MAX_CLASSES)]
    assert len(set(styles)) == MAX_CLASSES
    assert {s.petals for s in styles} == set(range(3, 9))
    assert len({s.hue for s in styles}) == 6 and len({s.shape for s in styles}) == 3
    with pytest.raises(ValueError):
        flower_style(MAX_CLASSES)


def test_draw_flower_is_deterministic_bgr() -> None:
    a = draw_flower(7, np.random.default_rng(11), size=48)
    b = draw_flower(7, np.random.default_rng(11), size=48)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) == 48
    assert np.array_equal(a, b)


def _features(image: np.ndarray) -> np.ndarray:
    """The central square, downsampled to 16x16 pixels."""
    h, w = image.shape[:2]
    side = min(h, w)
    square = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    return cv2.resize(square, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255


def test_classes_are_learnable_by_a_nearest_mean_classifier() -> None:
    """Raw downsampled pixels and a nearest-class-mean rule beat chance (1/6) by a wide margin."""
    rng = np.random.default_rng(0)
    classes = range(6)
    means = np.stack([np.mean([_features(draw_flower(k, rng, 48)) for _ in range(20)], 0) for k in classes])
    correct = total = 0
    for k in classes:
        for _ in range(10):
            x = _features(draw_flower(k, rng, 48))
            correct += int(np.argmin(((means - x) ** 2).sum(1)) == k)
            total += 1
    assert correct / total >= 0.45, f"accuracy {correct / total:.2f} (chance 0.17)"


def test_same_hue_classes_differ_in_petals() -> None:
    """Classes 0 and 6 share the red hue; their petal masks (red pixel share) must differ."""
    rng = np.random.default_rng(1)
    styles = flower_style(0), flower_style(6)
    assert styles[0].hue == styles[1].hue and styles[0][::2] != styles[1][::2]

    def red_share(k: int) -> float:
        hsv = cv2.cvtColor(draw_flower(k, rng, 64), cv2.COLOR_BGR2HSV)
        red = ((hsv[..., 0] < 8) | (hsv[..., 0] > 172)) & (hsv[..., 1] > 140) & (hsv[..., 2] > 120)
        return float(red.mean())

    broad = np.mean([red_share(0) for _ in range(20)])  # 3 round petals
    slender = np.mean([red_share(6) for _ in range(20)])  # 4 slender petals
    assert broad > 1.5 * slender


@pytest.mark.parametrize("num_classes", [0, -1, MAX_CLASSES + 1])
def test_num_classes_out_of_range(tmp_path: Path, num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_release(tmp_path, num_classes=num_classes)
    assert not (tmp_path / "102flowers.tgz").exists()


def test_is_synthetic(tmp_path: Path, release: Path) -> None:
    assert is_synthetic(release) and is_synthetic(str(release))
    assert not is_synthetic(tmp_path)
    assert not is_synthetic(tmp_path / "missing")
