"""Host (x86) side of the arm64 check: a small trained model, exported to every format, and the images.

Run with the main environment (torch): ``python -m tests.arm64.host_models OUT``. Writes into OUT:
``exports/`` (every row of the format table), ``exports-arm/`` (``--ort-preset arm`` int8 ONNX),
``gate.npz`` (the verification batch, its targets, the PyTorch logits and probabilities: the gate's reference),
``images/`` (the images both architectures classify), ``clip.mp4`` (a short video for ``run``) and
``clip-window.mp4`` (the same pictures looped: the window route's camera, still running when the window is closed)
and ``release/`` (the committed release's int8 files: their x86/arm64 agreement on the same photos).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

REAL_JPG = Path(__file__).resolve().parents[3] / "shared" / "data" / "oxford102-trainval" / "jpg"
RELEASE = Path(__file__).resolve().parents[2] / "models" / "oxford102-lite0"
RELEASE_FILES = ("model_int8.onnx", "model_int8.tflite")
WINDOW_CLIP_LOOPS = 50  # 600 frames: still running, emulated, long after the window is checked and closed
N_IMAGES = 128  # fp16 agreement >= 99% must allow a flip (200 photos: 1 flip measured on the Pi 5)


def train_tiny_model(root: Path) -> tuple[Path, Path]:
    """The suite's tiny Lite0 (the fixtures of tests/conftest.py): its checkpoint and prepared dataset."""
    from tests.conftest import make_tiny_prepared, train_tiny

    prepared = make_tiny_prepared(root)
    return train_tiny(prepared, root / "run"), prepared


def export(checkpoint: Path, prepared: Path, out: Path) -> None:
    from export.calibration import verification_set
    from export.exporter import ExportConfig, export_all, reference
    from train.checkpoint import load_bundle, model_from_bundle

    fast = dict(calib_min=8, calib_n=32, verify_n=16, allow_drop=True)
    export_all(ExportConfig(checkpoint=str(checkpoint), data=str(prepared), out=str(out / "exports"), **fast))
    export_all(
        ExportConfig(
            checkpoint=str(checkpoint),
            data=str(prepared),
            out=str(out / "exports-arm"),
            formats=("onnx",),
            precisions=("int8",),
            ort_preset="arm",
            **fast,
        )
    )
    model, spec = model_from_bundle(load_bundle(checkpoint))
    batch, targets, _ = verification_set(prepared, spec, split="val", limit=fast["verify_n"])
    ref = reference(model, batch, targets)
    # the softmax is PyTorch's op (export.verify): computed here, as arm64 has no torch
    np.savez(out / "gate.npz", batch=ref.batch, targets=ref.targets, logits=ref.logits, probabilities=ref.probabilities)


def copy_images(prepared: Path, out: Path) -> Path:
    """Real Oxford-102 JPEGs where present, else the synthetic release's cached images."""
    images = out / "images"
    images.mkdir()
    source = sorted(REAL_JPG.glob("*.jpg")) if REAL_JPG.is_dir() else sorted(prepared.rglob("*.jpg"))
    for path in source[:N_IMAGES]:
        shutil.copy(path, images / path.name)
    return images


def write_clip(images: Path, path: Path, frames: int = 12, size=(320, 240), loops: int = 1) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    pictures = [cv2.resize(cv2.imread(str(image)), size) for image in sorted(images.glob("*.jpg"))[:frames]]
    for _ in range(loops):
        for picture in pictures:
            writer.write(picture)
    writer.release()


def main(out: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, prepared = train_tiny_model(out / "train")
    export(checkpoint, prepared, out)
    images = copy_images(prepared, out)
    write_clip(images, out / "clip.mp4")
    write_clip(images, out / "clip-window.mp4", loops=WINDOW_CLIP_LOOPS)
    shutil.copytree(prepared, out / "flowers", ignore=shutil.ignore_patterns("*.tmp*"))  # bench's --data
    (out / "release").mkdir()
    for name in RELEASE_FILES:
        shutil.copy(RELEASE / name, out / "release" / name)


if __name__ == "__main__":
    main(sys.argv[1])
