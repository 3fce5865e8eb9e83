"""Decoding uploaded images safely: size and pixel limits are checked from the header, before decoding."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from edge_runtime.errors import FloraEdgeError


class BadImage(FloraEdgeError):
    """An upload that is not an image we can decode, or one over the limits."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding pixels; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def decode_upload(data: bytes, *, max_pixels: int, spec=None) -> np.ndarray:
    """A BGR image from uploaded bytes, refusing decompression bombs before they are decoded.

    With the model's ``spec``, a large JPEG is decoded at reduced size, as everywhere else.
    """
    from edge_runtime.preprocess import decode_flags  # here: preprocess imports header_size from this module

    if not data:
        raise BadImage("empty body: send a JPEG or PNG (multipart field 'file', or the raw bytes)")
    size = header_size(data)
    if size and size[0] * size[1] > max_pixels:
        raise BadImage(f"image is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels; the limit is {max_pixels:,}", 413)
    buf = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buf, decode_flags(buf, spec))
    if image is None:
        raise BadImage("not a decodable image (JPEG, PNG, WebP or BMP expected)", 415)
    if image.shape[0] * image.shape[1] > max_pixels:
        raise BadImage(f"image has {image.shape[0] * image.shape[1]:,} pixels; the limit is {max_pixels:,}", 413)
    return image
