"""A synthetic stand-in for the Oxford 102 Flowers release, in exactly the official raw format.

``make_synthetic_release`` writes ``102flowers.tgz`` (``jpg/image_00001.jpg`` ...),
``imagelabels.mat`` (``labels``: 1xN uint8, 1-based classes) and ``setid.mat``
(``trnid``/``valid``/``tstid``: 1xk uint16, 1-based image ids) plus a ``SYNTHETIC.md`` marker.
The pictures are procedurally drawn, not real flowers: the class decides the petal count, the
petal hue and the petal shape; position, rotation, scale, tilt, background, stem, colour and
JPEG noise are per-image nuisance. The output is byte-for-byte reproducible for a given seed.
"""

from __future__ import annotations

import colorsys
import gzip
import io
import math
import tarfile
from functools import cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import scipy.io

from edge_runtime.atomic import write_bytes_atomic

SYNTHETIC_MARKER = "SYNTHETIC.md"
MAX_CLASSES = 102
PETAL_COUNTS = (3, 4, 5, 6, 7, 8)
# OpenCV hue units (0..179, i.e. degrees / 2): red, yellow, green, cyan, blue, magenta.
HUES = (0, 28, 60, 92, 118, 150)
SHAPES = ("round", "slender", "pointed")
# Half-width of a petal as a fraction of its length, per shape.
_PETAL_WIDTH = {"round": 0.30, "slender": 0.10, "pointed": 0.36}
_CENTRE_COLOURS_BGR = ((20, 45, 80), (30, 160, 230), (25, 25, 30), (200, 225, 235), (40, 90, 150))
_JPEG_QUALITY = 90
_SHIFT = 4  # sub-pixel bits for cv2 polygon drawing
_MAT_DESCRIPTION = b"MATLAB 5.0 MAT-file, written by FloraEdge prepare.synthetic (procedurally generated)"


class FlowerStyle(NamedTuple):
    """What a class looks like: petal count, petal hue (OpenCV units 0..179) and petal shape."""

    petals: int
    hue: int
    shape: str


def flower_style(class_index: int) -> FlowerStyle:
    """The unique (petal count, hue, shape) of a 0-based class index in ``0..101``.

    Digits ``h = k % 6``, ``a = k // 6 % 6``, ``s = k // 36`` map one-to-one onto
    (hue ``h``, count ``(h + a) % 6``, shape ``(h + a + s) % 3``), so neighbouring classes differ
    in several attributes at once and no two of the 102 classes share a style.
    """
    if not 0 <= class_index < MAX_CLASSES:
        raise ValueError(f"class_index must be in 0..{MAX_CLASSES - 1}, got {class_index}")
    h, a, s = class_index % 6, class_index // 6 % 6, class_index // 36
    return FlowerStyle(PETAL_COUNTS[(h + a) % 6], HUES[h], SHAPES[(h + a + s) % 3])


def _hsv_to_bgr(h: float, s: float, v: float) -> tuple[int, int, int]:
    """OpenCV-style HSV (h in 0..180, s and v in 0..255) to an integer BGR colour."""
    s, v = min(max(s, 0.0), 255.0), min(max(v, 0.0), 255.0)
    r, g, b = colorsys.hsv_to_rgb((h % 180) / 180, s / 255, v / 255)
    return round(b * 255), round(g * 255), round(r * 255)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float (..., 2) x/y points as the int32 sub-pixel polygon(s) cv2 expects with ``shift=_SHIFT``."""
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _pt(point: np.ndarray) -> tuple[int, int]:
    """One float x/y point as the integer sub-pixel tuple cv2 expects with ``shift=_SHIFT``."""
    x, y = np.round(np.asarray(point, dtype=np.float64) * (1 << _SHIFT)).astype(int)
    return int(x), int(y)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A muted base colour with smooth low-frequency blotches and a few foliage blobs."""
    base = np.array(_hsv_to_bgr(rng.uniform(0, 180), rng.uniform(10, 80), rng.uniform(70, 200)), np.float32)
    grid = rng.standard_normal((int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3), dtype=np.float32)
    grid = np.clip(base + grid * np.float32(rng.uniform(8, 35)), 0, 255).astype(np.uint8)
    image = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(0, 5))):
        colour = _hsv_to_bgr(rng.uniform(35, 80), rng.uniform(60, 180), rng.uniform(40, 140))
        centre = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        axes = (float(rng.uniform(0.05, 0.3) * w), float(rng.uniform(0.03, 0.15) * h))
        cv2.ellipse(image, (centre, axes, float(rng.uniform(0, 180))), colour, -1, cv2.LINE_AA)
    return image


def _stem(image: np.ndarray, centre: np.ndarray, radius: float, rng: np.random.Generator) -> None:
    """A green stem from the flower towards the lower edge, sometimes with a leaf."""
    h, w = image.shape[:2]
    angle = math.pi / 2 + rng.uniform(-0.5, 0.5)  # image y grows downwards
    end = centre + np.array([math.cos(angle), math.sin(angle)]) * (h + w)
    colour = _hsv_to_bgr(rng.uniform(40, 75), rng.uniform(120, 220), rng.uniform(60, 160))
    thickness = max(1, round(min(h, w) / rng.uniform(25, 45)))
    cv2.line(image, _pt(centre), _pt(end), colour, thickness, cv2.LINE_AA, _SHIFT)
    if rng.random() < 0.6:
        along = centre + np.array([math.cos(angle), math.sin(angle)]) * radius * rng.uniform(1.3, 2.0)
        side = rng.choice([-1.0, 1.0])
        leaf_angle = math.degrees(angle) + side * rng.uniform(30, 60)
        offset = np.array([math.cos(math.radians(leaf_angle)), math.sin(math.radians(leaf_angle))])
        leaf_centre = along + offset * radius * 0.45
        axes = (float(radius * 0.5), float(radius * 0.15))
        cv2.ellipse(
            image, (tuple(map(float, leaf_centre)), (axes[0] * 2, axes[1] * 2), leaf_angle), colour, -1, cv2.LINE_AA
        )


@cache
def _petal_profile(shape: str, points: int = 20) -> tuple[np.ndarray, np.ndarray, float]:
    """Positions ``t`` along a petal (0..1), its half-width profile there (max 1), and where it is widest."""
    t = np.linspace(0.0, 1.0, points)
    if shape == "pointed":
        return t, 6.75 * t * (1.0 - t) ** 2, 1 / 3  # narrow base, sharp tip
    return t, 2.0 * np.sqrt(t * (1.0 - t)), 1 / 2  # ellipse


def _petal_outlines(style: FlowerStyle, start: float, lengths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Closed outlines (petals, 2 * points, 2) of petals from radius ``start``, rotated to ``angles``.

    The width is capped so that many broad petals overlap their neighbours only slightly.
    """
    t, profile, widest = _petal_profile(style.shape)
    spacing_cap = 1.2 * math.sin(math.pi / style.petals) * (start + widest * lengths)
    half_widths = np.minimum(_PETAL_WIDTH[style.shape] * lengths, spacing_cap)
    x = start + t * lengths[:, None]
    y = profile * half_widths[:, None]
    x, y = np.concatenate([x, x[:, ::-1]], 1), np.concatenate([y, -y[:, ::-1]], 1)
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    return np.stack([x * c - y * s, x * s + y * c], -1)


def _draw_petals(
    image: np.ndarray, style: FlowerStyle, centre: np.ndarray, radius: float, rng: np.random.Generator
) -> None:
    """The class-defining petals: rotated, tilted (as if seen at an angle) and colour-jittered."""
    hue = style.hue + rng.uniform(-4, 4)
    sat, val = rng.uniform(170, 255), rng.uniform(175, 255)
    tilt_axis, squash = rng.uniform(0, math.pi), rng.uniform(0.78, 1.0)
    c, s = math.cos(tilt_axis), math.sin(tilt_axis)
    rot = np.array([[c, -s], [s, c]])
    tilt = rot @ np.diag([1.0, squash]) @ rot.T
    n = style.petals
    angles = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(n) / n + rng.uniform(-0.08, 0.08, n)
    start = 0.16 * radius
    lengths = (radius - start) * rng.uniform(0.88, 1.05, n)
    polygons = _fixed(_petal_outlines(style, start, lengths, angles) @ tilt.T + centre)
    values = val * rng.uniform(0.88, 1.0, n)
    thickness = max(1, round(radius / 40))
    for polygon, v in zip(polygons, values, strict=True):
        cv2.fillPoly(image, [polygon], _hsv_to_bgr(hue, sat, v), cv2.LINE_AA, _SHIFT)
        cv2.polylines(image, [polygon], True, _hsv_to_bgr(hue, sat, v * 0.6), thickness, cv2.LINE_AA, _SHIFT)


def _draw_centre(image: np.ndarray, centre: np.ndarray, radius: float, rng: np.random.Generator) -> None:
    """A disc with a few stamen dots; its colour is nuisance, not class information."""
    palette = _CENTRE_COLOURS_BGR
    colour = palette[int(rng.integers(len(palette)))]
    disc = radius * rng.uniform(0.15, 0.22)
    cv2.circle(image, _pt(centre), round(disc * (1 << _SHIFT)), colour, -1, cv2.LINE_AA, _SHIFT)
    dot = palette[int(rng.integers(len(palette)))]
    for _ in range(int(rng.integers(0, 7))):
        offset = rng.uniform(-0.7, 0.7, 2) * disc
        r = max(1.0, disc * 0.15)
        cv2.circle(image, _pt(centre + offset), round(r * (1 << _SHIFT)), dot, -1, cv2.LINE_AA, _SHIFT)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera-like nuisance: optional blur, per-channel gain, brightness shift and sensor noise."""
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    gain_and_shift = np.hstack([np.diag(rng.uniform(0.93, 1.07, 3)), np.full((3, 1), rng.uniform(-12, 12))])
    image = cv2.transform(image, gain_and_shift)
    amplitude = rng.uniform(0, 20)  # uniform sensor noise, std up to ~6 grey levels
    noise = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    return cv2.addWeighted(image, 1.0, noise, amplitude / 255, -amplitude / 2)


def draw_flower(class_index: int, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One synthetic flower picture of class ``class_index`` (0-based) as uint8 HxWx3 BGR.

    The shorter side is ``size`` and the longer side ``round(size * U(1.0, 1.4))``, in a random
    orientation, so pictures are not all square (like the real set). Everything except the
    class's petal count, hue and shape is random nuisance drawn from ``rng``.
    """
    style = flower_style(class_index)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    short, long = size, round(size * rng.uniform(1.0, 1.4))
    h, w = (short, long) if rng.random() < 0.5 else (long, short)
    image = _background(h, w, rng)
    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.12, 0.12, 2) * short
    radius = rng.uniform(0.30, 0.45) * short
    if rng.random() < 0.7:
        _stem(image, centre, radius, rng)
    _draw_petals(image, style, centre, radius, rng)
    _draw_centre(image, centre, radius, rng)
    return _finish(image, rng)


def _check_arguments(num_classes: int, per_class: tuple[int, int, int], size: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if min(per_class) < 0 or sum(per_class) < 1:
        raise ValueError(f"images per class must be >= 0 and not all zero, got {per_class}")
    if num_classes * sum(per_class) > np.iinfo(np.uint16).max:
        raise ValueError("too many images for uint16 image ids (at most 65535)")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")


def _assign_ids(
    num_classes: int, per_class: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels (1-based, by image id) and the three sorted 1-based id splits; ids shuffled across classes."""
    total = sum(per_class)
    labels = np.repeat(np.arange(1, num_classes + 1), total)
    split_of = np.tile(np.repeat(np.arange(3), per_class), num_classes)
    order = rng.permutation(labels.size)  # order[j] = which (class, slot) gets image id j + 1
    labels, split_of = labels[order], split_of[order]
    ids = np.arange(1, labels.size + 1)
    splits = [ids[split_of == k].astype(np.uint16).reshape(1, -1) for k in range(3)]
    return labels.astype(np.uint8).reshape(1, -1), splits


def _tar_bytes(labels: np.ndarray, size: int, rng: np.random.Generator) -> bytes:
    """The gzip tar of all JPEGs, with fixed metadata so the bytes depend on the seed only."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for image_id, label in enumerate(labels.ravel(), start=1):
            ok, jpeg = cv2.imencode(
                ".jpg", draw_flower(int(label) - 1, rng, size), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
            )
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for image {image_id}")
            info = tarfile.TarInfo(f"jpg/image_{image_id:05d}.jpg")
            info.size, info.mtime, info.mode = jpeg.size, 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(jpeg.tobytes()))
    return buffer.getvalue()


def _mat_bytes(variables: dict[str, np.ndarray]) -> bytes:
    """``scipy.io.savemat`` output with the timestamped header text replaced by a fixed one."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, format="5", do_compression=False, oned_as="row")
    data = bytearray(buffer.getvalue())
    data[:116] = _MAT_DESCRIPTION.ljust(116, b" ")
    return bytes(data)


def _marker_text(num_classes: int, per_class: tuple[int, int, int], size: int, seed: int) -> str:
    train, val, test = per_class
    return (
        "# SYNTHETIC stand-in for Oxford 102 Flowers\n\n"
        "This folder is NOT the real Oxford 102 Flowers dataset and holds NO real flower photographs.\n"
        "Every image was procedurally generated by `prepare/synthetic.py` (FloraEdge) and only mimics\n"
        "the official file format (`102flowers.tgz`, `imagelabels.mat`, `setid.mat`), so that the demo\n"
        "and the tests run offline. Accuracy measured on it says nothing about real flowers.\n\n"
        "Each class is a unique combination of petal count (3-8), petal hue (6 hues) and petal shape\n"
        "(round, slender, pointed); position, rotation, scale, tilt, background, stem, colour and JPEG\n"
        "noise vary per image. Class names are borrowed from the official list only as labels.\n\n"
        "## Generator parameters\n\n"
        f"- classes: {num_classes}\n"
        f"- images per class: {sum(per_class)} (train {train}, val {val}, test {test})\n"
        f"- total images: {num_classes * sum(per_class)}\n"
        f"- size: shorter side {size} px, longer side up to {round(size * 1.4)} px\n"
        f"- JPEG quality: {_JPEG_QUALITY}\n"
        f"- seed: {seed}\n"
    )


def make_synthetic_release(
    out_dir: str | Path,
    *,
    num_classes: int = 102,
    train_per_class: int = 10,
    val_per_class: int = 10,
    test_per_class: int = 20,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Writes 102flowers.tgz, imagelabels.mat, setid.mat, SYNTHETIC.md into out_dir (created if needed).

    Image ids are ``1..N`` consecutive and shuffled across classes; each class contributes exactly
    ``train_per_class``/``val_per_class``/``test_per_class`` ids to ``trnid``/``valid``/``tstid``.
    The same arguments give byte-identical files. Returns ``out_dir`` as a ``Path``.
    Raises ``ValueError`` if ``num_classes`` is not in ``1..102`` or the other sizes are invalid.
    """
    per_class = (train_per_class, val_per_class, test_per_class)
    _check_arguments(num_classes, per_class, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The marker goes first, so a half-written folder can never pass for a real release.
    write_bytes_atomic(out / SYNTHETIC_MARKER, _marker_text(num_classes, per_class, size, seed).encode("utf-8"))
    rng = np.random.default_rng(seed)
    labels, (trnid, valid, tstid) = _assign_ids(num_classes, per_class, rng)
    write_bytes_atomic(out / "102flowers.tgz", _tar_bytes(labels, size, rng))
    write_bytes_atomic(out / "imagelabels.mat", _mat_bytes({"labels": labels}))
    write_bytes_atomic(out / "setid.mat", _mat_bytes({"trnid": trnid, "valid": valid, "tstid": tstid}))
    return out


def is_synthetic(source_dir: str | Path) -> bool:
    """True if ``source_dir`` holds the ``SYNTHETIC.md`` marker, i.e. it is a generated stand-in."""
    return (Path(source_dir) / SYNTHETIC_MARKER).is_file()
