"""Shared fixtures: a miniature raw Oxford-102 release built in ``tmp_path``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.preprocess import center_crop, read_image_bgr, resize_shorter_side

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("FLORAEDGE_REALDATA", REPO.parent / "shared" / "data" / "oxford102-trainval"))


def write_jpeg(path: Path, rng: np.random.Generator, shape=(40, 56)) -> None:
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    path.write_bytes(data.tobytes())


def build_release(root: Path, *, classes: int = 3, per_split=(3, 2, 2), archive: bool = True, seed: int = 0) -> Path:
    """A miniature release: ``classes`` classes, (train, val, test) images per class, official file format."""
    import scipy.io  # not in the torch-free device environment, which never builds releases

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    per_class = sum(per_split)
    labels = np.repeat(np.arange(1, classes + 1), per_class).astype(np.uint8)
    ids = {"trnid": [], "valid": [], "tstid": []}
    for c in range(classes):
        class_ids = np.arange(c * per_class, (c + 1) * per_class) + 1
        cuts = np.cumsum(per_split)
        for key, chunk in zip(ids, np.split(class_ids, cuts[:-1]), strict=True):
            ids[key] += chunk.tolist()
    scipy.io.savemat(root / "imagelabels.mat", {"labels": labels[None, :]})
    scipy.io.savemat(root / "setid.mat", {k: np.array(v, dtype=np.uint16)[None, :] for k, v in ids.items()})
    jpg = root / "jpg"
    jpg.mkdir(exist_ok=True)
    for i in range(1, labels.size + 1):
        write_jpeg(jpg / f"image_{i:05d}.jpg", rng, shape=(40 + i % 7, 56))
    if archive:
        with tarfile.open(root / "102flowers.tgz", "w:gz") as tar:
            tar.add(jpg, arcname="jpg")
        for p in jpg.iterdir():
            p.unlink()
        jpg.rmdir()
    return root


@pytest.fixture
def mini_release(tmp_path: Path) -> Path:
    return build_release(tmp_path / "release")


def add_tar_member(archive: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    """Rewrite ``archive`` with one extra member (for the unsafe-archive tests)."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for m, content in members:
            tar.addfile(m, io.BytesIO(content) if content is not None else None)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def make_tiny_prepared(root: Path) -> Path:
    """A prepared synthetic dataset in ``root``: 4 classes, 8 train + 4 val + 4 test images each, 40 px cache."""
    from prepare.build import PrepareConfig, prepare_dataset
    from prepare.synthetic import make_synthetic_release

    release = make_synthetic_release(
        root / "release", num_classes=4, train_per_class=8, val_per_class=4, test_per_class=4, size=48, seed=0
    )
    prepare_dataset(PrepareConfig(source=release, out=root / "prepared", cache_size=40, workers=1))
    return root / "prepared"


def train_tiny(prepared: Path, run: Path) -> Path:
    """A Lite0 fine-tuned for 2 epochs at 32 px on ``prepared``: non-trivial weights, fast to export."""
    from train.trainer import TrainConfig, train

    train(
        TrainConfig(
            data=str(prepared),
            out=str(run),
            arch="efficientnet_lite0",
            img_size=32,
            epochs=2,
            head_epochs=0,
            batch_size=8,
            workers=0,
            progress=False,
            tta_flip=False,
            patience=0,
        )
    )
    return run / "best.pt"


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    return make_tiny_prepared(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_prepared, tmp_path_factory) -> Path:
    return train_tiny(tiny_prepared, tmp_path_factory.mktemp("tiny_run") / "run")


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT: a shell without job control starts its
    background commands with SIGINT ignored, Python then installs no KeyboardInterrupt handler, and
    the child would ignore the signal under test (CI launched as a background job did)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ---------------------------------------------------------------- MediaPipe, in an environment of its own
# (shared by test_tflite_metadata and test_export)

MEDIAPIPE_VERSION = "1.2.3"
MEDIAPIPE_PYTHON = Path(
    os.environ.get(
        "FLORAEDGE_MEDIAPIPE_PYTHON", Path.home() / ".cache" / "floraedge" / "mediapipe-venv" / "bin" / "python"
    )
)
MEDIAPIPE_SCRIPT = """
import json, sys
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions

options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]), max_results=3)
results = []
with vision.ImageClassifier.create_from_options(options) as classifier:
    for image in sys.argv[2:]:
        head = classifier.classify(mp.Image.create_from_file(image)).classifications[0]
        results.append([[c.index, c.category_name, c.score] for c in head.categories])
print(json.dumps({"version": mp.__version__, "head": head.head_name, "results": results}))
"""


def mediapipe_python() -> Path:
    """The Python of the venv with MediaPipe (never the project's: mediapipe replaces its cv2). `make mediapipe`
    makes it (`make test` runs that first): a test never installs packages itself."""
    if not MEDIAPIPE_PYTHON.exists():
        pytest.fail(f"no MediaPipe environment at {MEDIAPIPE_PYTHON}: run `make mediapipe` (make test does) first")
    return MEDIAPIPE_PYTHON


def run_mediapipe(model: Path, images: Path | list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    """MediaPipe's ImageClassifier on ``images`` in one process; stdout's last line is JSON with
    ``results``: per image, the top-3 ``[index, name, score]``."""
    script = tmp_path / "mediapipe_classify.py"
    script.write_text(MEDIAPIPE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    images = [images] if isinstance(images, Path) else images
    return subprocess.run(
        [str(mediapipe_python()), str(script), str(model), *map(str, images)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def square_png(image: np.ndarray, size: int, path: Path) -> Path:
    """``image`` centre-cropped and resized to exactly ``size`` x ``size``, as PNG: MediaPipe stretches
    the whole image to the input size while the runtime crops, so feed both the same pixels."""
    square = center_crop(resize_shorter_side(image, size), size)
    assert square.shape == (size, size, 3)
    cv2.imwrite(str(path), square)
    return path


def square_photo(path: Path, size: int) -> Path:
    """A real flower photo (a synthetic picture where the dataset is absent) as a ``square_png``."""
    jpgs = sorted((REAL_DATA / "jpg").glob("*.jpg"))[:1]
    if jpgs:
        image = read_image_bgr(jpgs[0])
    else:  # no dataset (clean CI): a smooth synthetic picture instead
        yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
        image = np.stack([xx / 320 * 255, yy / 240 * 255, (xx + yy) / 560 * 255], axis=-1).astype(np.uint8)
        cv2.circle(image, (160, 120), 60, (40, 200, 230), -1)
    return square_png(image, size, path)


def mediapipe_vs_runtime(model: Path, images_bgr: list[np.ndarray], tmp_path: Path) -> dict:
    """MediaPipe's ImageClassifier and the runtime's classify path on the same pixels: each image as a
    crop-size square PNG (MediaPipe stretches a whole image where the runtime resizes and crops), run
    through the runtime with resize = crop. Top-1 agreement, MediaPipe's top-1 scores and the largest
    difference between the two top-1 scores."""
    from edge_runtime.backends import load
    from edge_runtime.classify import to_probabilities
    from edge_runtime.preprocess import preprocess

    backend = load(model)
    size = backend.info.spec.crop_size
    same_pixels = backend.info.spec.replace(resize_size=size)
    (tmp_path / "mp").mkdir(exist_ok=True)
    pngs = [square_png(image, size, tmp_path / "mp" / f"{i:05d}.png") for i, image in enumerate(images_bgr)]
    ours = [
        to_probabilities(backend.predict(preprocess(read_image_bgr(p), same_pixels))[0], backend.info) for p in pngs
    ]
    done = run_mediapipe(model, pngs, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    names = [backend.info.labels[int(p.argmax())] for p in ours]
    scores = np.array([t[0][2] for t in theirs])
    return {
        "agreement": float(np.mean([t[0][1] == n for t, n in zip(theirs, names, strict=True)])),
        "scores": scores,
        "max_score_diff": float(np.abs(scores - [p.max() for p in ours]).max()),
    }
