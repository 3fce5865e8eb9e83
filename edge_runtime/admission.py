"""Image admission: an image's size is read from its header and checked before any pixel is decoded.

A few hundred bytes can declare a 60000 x 60000 image (a decompression bomb) or a 1 x 60000 one
that preprocessing would scale up to gigabytes. Every image the project decodes (``serve``,
``classify``, ``run``, ``prepare``) passes ``admit()`` first, against one ``ImageLimits``.
Only formats whose header this module reads are let through: anything else is refused rather
than decoded blindly.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from edge_runtime.errors import FloraEdgeError

ACCEPTED = "JPEG, PNG, BMP, WebP, TIFF, GIF, PNM/PAM or Sun raster"
# the file names of those formats: what `classify DIR` and a folder source take (one list, so none is skipped)
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".gif"}
    | {".pbm", ".pgm", ".ppm", ".pnm", ".pam", ".ras", ".sr"}
)


class ImageRejected(FloraEdgeError, ValueError):
    """An image refused before decoding: unknown format, unreadable header, or over a limit."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status  # the HTTP status the server answers with


@dataclass(frozen=True, kw_only=True)
class ImageLimits:
    """The largest image anything in FloraEdge decodes."""

    max_pixels: int = 40_000_000  # a 40 MP photo: 120 MB once decoded to BGR
    max_side: int = 32_768
    max_aspect: float = 50.0  # longer side / shorter side; panoramas are ~10
    max_bytes: int = 256 * 1024 * 1024  # the encoded file

    def check(self, width: int, height: int) -> None:
        """Raise ``ImageRejected`` (HTTP 413) when a ``width`` x ``height`` image is over a limit."""
        if width < 1 or height < 1:
            raise ImageRejected(f"image header declares an empty {width}x{height} image", 400)
        problem = None
        if max(width, height) > self.max_side:
            problem = f"a side over {self.max_side:,} pixels"
        elif width * height > self.max_pixels:
            problem = f"{width * height:,} pixels, over the {self.max_pixels:,}-pixel limit"
        elif max(width, height) / min(width, height) > self.max_aspect:
            problem = f"an aspect ratio over {self.max_aspect:g}:1"
        if problem:
            raise ImageRejected(f"image is {width}x{height}: {problem}; send a smaller image", 413)


DEFAULT_LIMITS = ImageLimits()


def admit(data: bytes | memoryview, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(width, height) of an encoded image, after checking them against ``limits``; nothing is decoded."""
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"image file of {len(data):,} bytes is over the {limits.max_bytes:,}-byte limit", 413)
    if header_reader(data) is None:
        raise ImageRejected(f"not an image format FloraEdge reads (accepted: {ACCEPTED})", 415)
    size = header_size(data)
    if size is None:
        raise ImageRejected("image header is truncated or malformed (its size cannot be read)", 400)
    limits.check(*size)
    return size


def header_reader(data: bytes | memoryview):
    """The header parser for ``data``'s format (from its magic bytes), or None for a format we do not read."""
    head = bytes(data[:32])
    return next((read for magic, read in _READERS if head.startswith(magic)), None)


def header_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) as the header declares them, unchecked; None when it cannot be read."""
    reader = header_reader(data)
    try:
        return reader(data) if reader else None
    except (struct.error, IndexError, ValueError):
        return None


def _png(data) -> tuple[int, int] | None:
    return struct.unpack(">II", data[16:24]) if bytes(data[12:16]) == b"IHDR" else None


def _jpeg(data) -> tuple[int, int] | None:
    """The first start-of-frame marker's size (markers walked by their lengths, no pixel data read)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None  # entropy-coded data before any frame header: not a JPEG we read
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _bmp(data) -> tuple[int, int] | None:
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # a negative height means top-down rows


def _webp(data) -> tuple[int, int] | None:
    if bytes(data[8:12]) != b"WEBP":
        return None
    chunk = bytes(data[12:16])
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: two 14-bit (size - 1) fields
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the 24-bit canvas (size - 1)
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _tiff(data) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first IFD, the page OpenCV decodes."""
    order = "<" if bytes(data[:2]) == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[offset : offset + 2])[0]
    size = {}
    for k in range(count):
        entry = offset + 2 + 12 * k
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            fmt = order + ("H" if kind == 3 else "I")
            size[tag] = struct.unpack(fmt, data[entry + 8 : entry + 8 + struct.calcsize(fmt)])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _gif(data) -> tuple[int, int] | None:
    return struct.unpack("<HH", data[6:10])  # the logical screen: OpenCV decodes onto it


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n)*(\d+)")


def _pnm(data) -> tuple[int, int] | None:
    """P1-P6: magic, width, height as whitespace-separated text (comments allowed)."""
    head = bytes(data[:1024])
    first = _PNM_TOKEN.match(head, 2)
    second = first and _PNM_TOKEN.match(head, first.end())
    return (int(first.group(1)), int(second.group(1))) if second else None


def _pam(data) -> tuple[int, int] | None:
    head = bytes(data[:1024]).split(b"ENDHDR", 1)[0]
    width, height = re.search(rb"\nWIDTH\s+(\d+)", head), re.search(rb"\nHEIGHT\s+(\d+)", head)
    return (int(width.group(1)), int(height.group(1))) if width and height else None


def _sun_raster(data) -> tuple[int, int] | None:
    return struct.unpack(">II", data[4:12])


_READERS = (
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"\xff\xd8", _jpeg),
    (b"BM", _bmp),
    (b"RIFF", _webp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    *((f"P{k}".encode(), _pnm) for k in "123456"),  # not PFM: OpenCV decodes a grey one to 2-D floats
    (b"P7", _pam),
    (b"\x59\xa6\x6a\x95", _sun_raster),
)
