"""``preprocess(frame_bgr, spec)``: the one place where pixels become model input.

The camera loop, int8 calibration, export verification, the benchmarks and the training
evaluation all call this function, so they cannot disagree. BGR (OpenCV's order) becomes
the spec's colour order here and only here.

Two savings keep the output equal to torchvision's resize + centre-crop within the tolerance
the parity test states: only the source window that the crop keeps is resized (one resize, of
the pixels that reach the model), and ``decode_bgr`` with a spec lets libjpeg decode a large
JPEG at 1/2, 1/4 or 1/8 size (DCT scaling) when even that is at least 4x ``resize_size`` on its
shorter side (see ``REDUCED_DECODE_MARGIN``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_runtime.admission import DEFAULT_LIMITS, ImageLimits, ImageRejected, admit
from edge_runtime.bounded import TooLargeError, read_bounded
from edge_runtime.errors import FloraEdgeError
from edge_runtime.spec import PreprocessSpec

_UPSCALE = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


class ImageReadError(FloraEdgeError, ValueError):
    """An image file that is missing, empty, not a regular file or cannot be decoded."""


def read_file_bytes(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """The bytes of a regular file. A FIFO, device or folder is refused without blocking on it,
    a file over ``limits.max_bytes`` without reading it."""
    try:
        return np.frombuffer(read_bounded(path, limits.max_bytes, "image"), np.uint8)
    except TooLargeError as exc:
        raise ImageReadError(str(exc)) from exc


# libjpeg's scaled IDCT is sharper than area averaging: on real photos the model input differs from the
# plain path's clearly when the reduced image is close to resize_size and barely when it is this many times
# larger, so area averaging still does most of the shrinking (the figures: docs/serving.md, studies/decode_parity.py).
REDUCED_DECODE_MARGIN = 4


def decode_factor(size: tuple[int, int], data: np.ndarray, spec: PreprocessSpec | None) -> int:
    """The largest JPEG DCT scale-down 1/f (f = 8, 4, 2) that leaves the shorter side at least
    ``REDUCED_DECODE_MARGIN`` x ``resize_size``; 1 for other formats or without a spec."""
    if spec is None or data[:2].tobytes() != b"\xff\xd8":
        return 1
    return next((f for f in (8, 4, 2) if min(size) >= f * REDUCED_DECODE_MARGIN * spec.resize_size), 1)


def decode_flags(size: tuple[int, int], data: np.ndarray, spec: PreprocessSpec | None) -> int:
    """``cv2.imdecode`` flags for ``data`` of ``size``: colour, at the reduced size ``decode_factor`` allows."""
    return _REDUCED[decode_factor(size, data, spec)]


MAX_PNG_CHUNKS = 4096  # chunks looked at for transparency before the image data; more: assume it may have some
WHITE_BAND_ROWS = 256  # rows composited at a time: the temporaries stay a few MB whatever the image's size


def decode_admitted(buf: np.ndarray, size: tuple[int, int], spec: PreprocessSpec | None) -> np.ndarray | None:
    """``cv2.imdecode`` of bytes ``admit()`` passed (``size`` is their header's), as BGR uint8; None if it fails.

    A transparent image is composited on white, as an image viewer or a browser shows it: OpenCV's colour
    decode drops the alpha channel and keeps whatever colour the transparent pixels store (often black).
    """
    image = cv2.imdecode(buf, decode_flags(size, buf, spec))
    if image is None or not may_be_transparent(buf):
        return image
    return on_white(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), image)


def may_be_transparent(data: np.ndarray) -> bool:
    """Whether the header allows transparency (then the file is decoded a second time, with its alpha channel):
    a PNG with an alpha channel or a tRNS chunk, a WebP with alpha, any GIF or TIFF."""
    head = data[:32].tobytes()
    if head.startswith(b"\x89PNG"):
        return head[25:26] in (b"\x04", b"\x06") or png_has_trns(data)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        if head[12:16] == b"VP8X":
            return bool(head[20] & 0x10)
        return head[12:16] == b"VP8L" and bool(int.from_bytes(head[21:25], "little") >> 28 & 1)
    return head.startswith((b"GIF8", b"II*\x00", b"MM\x00*"))


def png_has_trns(data: np.ndarray) -> bool:
    """A tRNS chunk (transparency of a palette, grey or RGB image) before the first IDAT."""
    i = 8
    for _ in range(MAX_PNG_CHUNKS):
        kind = data[i + 4 : i + 8].tobytes()
        if len(kind) < 4 or kind == b"IDAT":
            return False
        if kind == b"tRNS":
            return True
        i += 12 + int.from_bytes(data[i : i + 4].tobytes(), "big")  # length, type, data, CRC
    return True


def on_white(full: np.ndarray | None, image: np.ndarray) -> np.ndarray:
    """``image`` (the colour decode) with the transparent pixels of ``full`` (the same file decoded with its alpha
    channel) made white. Where the two decodes are not the same pixels (an EXIF rotation that only the colour
    decode applies), ``image`` is returned as it is."""
    if full is None or full.ndim != 3 or full.shape[2] != 4 or full.shape[:2] != image.shape[:2]:
        return image
    if full.dtype == np.uint16:
        full = (full >> 8).astype(np.uint8)
    if full.dtype != np.uint8 or full[..., 3].min() == 255:
        return image
    bands = [slice(top, top + WHITE_BAND_ROWS) for top in range(0, image.shape[0], WHITE_BAND_ROWS)]
    differing = sum(int(np.abs(full[b, :, :3].astype(np.int16) - image[b]).sum()) for b in bands)
    if differing > 2 * image.size:  # more than 2 levels per value on average: not the same orientation
        return image
    for band in bands:  # out = (rgb * a + 255 * (255 - a)) / 255 in uint16, which cannot overflow
        alpha = full[band, :, 3:].astype(np.uint16)
        mixed = full[band, :, :3].astype(np.uint16)
        mixed *= alpha
        mixed += 255 * (255 - alpha)
        mixed += 127
        mixed //= 255
        image[band] = mixed
    return image


def decode_bgr(
    data: bytes | np.ndarray,
    spec: PreprocessSpec | None = None,
    *,
    name: str = "image",
    limits: ImageLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode image bytes into a uint8 HxWx3 BGR array (EXIF orientation applied).

    The header is checked against ``limits`` first: nothing over them is ever decoded. With
    ``spec``, a large JPEG is decoded at reduced size (see ``decode_factor``); ``preprocess`` of
    the result matches ``preprocess`` of the full decode within the parity test's tolerance.
    """
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise ImageReadError(f"{name}: empty, not an image")
    try:
        size = admit(buf.data, limits)
        image = decode_admitted(buf, size, spec)
    except (cv2.error, ImageRejected) as exc:
        raise ImageReadError(f"{name}: {exc}") from exc
    if image is None:
        raise ImageReadError(f"{name}: not a decodable image (corrupt or unsupported format)")
    return image


def read_image_bgr(
    path: str | Path, spec: PreprocessSpec | None = None, *, limits: ImageLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """Decode an image file (see ``decode_bgr``; ``spec`` allows reduced-size JPEG decoding)."""
    return decode_bgr(read_file_bytes(path, limits), spec, name=str(path), limits=limits)


def read_image_or_none(path: str | Path, spec: PreprocessSpec | None = None) -> np.ndarray | None:
    """``read_image_bgr``, or None for a file that is refused or cannot be decoded (a frame to skip)."""
    try:
        return read_image_bgr(path, spec)
    except ImageReadError:
        return None


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``size``; torchvision's rule: the longer side is truncated."""
    return (int(size * h / w), size) if w <= h else (size, int(size * w / h))


def resize_shorter_side(image: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize so the shorter side is ``size``. Shrinking uses area averaging (antialiased)."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    new_h, new_w = resized_size(h, w, size)
    flag = cv2.INTER_AREA if size < min(h, w) else _UPSCALE[interpolation]
    return cv2.resize(image, (new_w, new_h), interpolation=flag)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window (the image must be at least that large)."""
    h, w = image.shape[:2]
    top, left = round((h - size) / 2), round((w - size) / 2)  # torchvision's CenterCrop offsets
    return image[top : top + size, left : left + size]


def resize_and_crop(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``center_crop(resize_shorter_side(image))``; when shrinking, only the window the crop keeps is resized.

    The window's edges are rounded to whole source pixels (at most half a source pixel off
    torchvision's), which the parity test's tolerance covers. Enlarging keeps the exact path:
    a small image costs little, and bilinear sampling would shift with the window.
    """
    h, w = image.shape[:2]
    size, crop = spec.resize_size, spec.crop_size
    if size >= min(h, w):
        return center_crop(resize_shorter_side(image, size, spec.interpolation), crop)
    new_h, new_w = resized_size(h, w, size)
    sy, sx = h / new_h, w / new_w
    top, left = round((new_h - crop) / 2), round((new_w - crop) / 2)
    y0, y1 = round(top * sy), round((top + crop) * sy)
    x0, x1 = round(left * sx), round((left + crop) * sx)
    return cv2.resize(image[y0:y1, x0:x1], (crop, crop), interpolation=cv2.INTER_AREA)


def preprocess(frame_bgr: np.ndarray, spec: PreprocessSpec, *, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """One BGR uint8 frame -> a float32 batch of one, laid out as ``spec.layout``; a frame over ``limits`` (those
    its decoder admitted it under, e.g. serve's ``--max-pixels``) is refused."""
    if frame_bgr is None or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        shape = None if frame_bgr is None else (frame_bgr.shape, str(frame_bgr.dtype))
        raise ImageRejected(f"preprocess expects an HxWx3 uint8 BGR image, got {shape}")
    limits.check(frame_bgr.shape[1], frame_bgr.shape[0])  # a camera or video frame has no header to check
    image = resize_and_crop(frame_bgr, spec)
    if spec.color_order == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    mean = np.asarray(spec.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
    if spec.layout == "NCHW":  # convert while transposing: one pass, then normalize each plane in place
        x = np.array(image.transpose(2, 0, 1), dtype=np.float32, order="C")
        x -= mean[:, None, None]
        x *= inv_std[:, None, None]
    else:  # normalize whole rows: numpy broadcasts a 3-vector over HxWx3 several times slower
        x = image.astype(np.float32)
        rows = x.reshape(x.shape[0], -1)  # a view of x
        rows -= np.tile(mean, x.shape[1])
        rows *= np.tile(inv_std, x.shape[1])
    return x[None]
