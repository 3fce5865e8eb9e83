"""``preprocess(frame_bgr, spec)``: the one place where pixels become model input.

The camera loop, int8 calibration, export verification, the benchmarks and the training
evaluation all call this function, so they cannot disagree. BGR (OpenCV's order) becomes
the spec's colour order here and only here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_runtime.admission import DEFAULT_LIMITS, ImageLimits, ImageRejected, admit
from edge_runtime.errors import FloraEdgeError
from edge_runtime.spec import PreprocessSpec

_UPSCALE = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


class ImageReadError(FloraEdgeError, ValueError):
    """An image file that is missing, empty or cannot be decoded."""


def read_image_bgr(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode an image file into a uint8 HxWx3 BGR array (EXIF orientation applied).

    Its header is checked against ``limits`` first: nothing over them is ever decoded."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ImageReadError(f"{path}: no such image file, or it is empty")
    if path.stat().st_size > limits.max_bytes:
        raise ImageReadError(f"{path}: {path.stat().st_size:,} bytes, over the {limits.max_bytes:,}-byte limit")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        admit(data.data, limits)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except (OSError, cv2.error, ImageRejected) as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt or unsupported format)")
    return image


def read_image_or_none(path: str | Path) -> np.ndarray | None:
    """``read_image_bgr``, or None for a file that is refused or cannot be decoded (a frame to skip)."""
    try:
        return read_image_bgr(path)
    except ImageReadError:
        return None


def resize_shorter_side(image: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize so the shorter side is ``size``. Shrinking uses area averaging (antialiased)."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    # torchvision's rule: the longer side is truncated, not rounded (keeps crops pixel-aligned with training)
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    flag = cv2.INTER_AREA if size < min(h, w) else _UPSCALE[interpolation]
    return cv2.resize(image, (new_w, new_h), interpolation=flag)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window (the image must be at least that large)."""
    h, w = image.shape[:2]
    top, left = round((h - size) / 2), round((w - size) / 2)  # torchvision's CenterCrop offsets
    return image[top : top + size, left : left + size]


def preprocess(frame_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One BGR uint8 frame -> a float32 batch of one, laid out as ``spec.layout``."""
    if frame_bgr is None or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        shape = None if frame_bgr is None else (frame_bgr.shape, str(frame_bgr.dtype))
        raise ImageRejected(f"preprocess expects an HxWx3 uint8 BGR image, got {shape}")
    DEFAULT_LIMITS.check(frame_bgr.shape[1], frame_bgr.shape[0])  # a camera or video frame has no header to check
    image = center_crop(resize_shorter_side(frame_bgr, spec.resize_size, spec.interpolation), spec.crop_size)
    if spec.color_order == "RGB":
        image = image[:, :, ::-1]
    mean = np.asarray(spec.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
    x = (image.astype(np.float32) - mean) * inv_std
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])
