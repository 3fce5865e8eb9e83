"""Decoding uploaded images safely: the header is checked against the limits before anything is decoded."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from edge_runtime.admission import DEFAULT_LIMITS, ImageRejected, admit
from edge_runtime.preprocess import decode_admitted

BadImage = ImageRejected  # an upload we refuse; ``.status`` is the HTTP status to answer with


def decode_upload(data: bytes, *, max_pixels: int, spec=None) -> np.ndarray:
    """A BGR image from uploaded bytes, refusing decompression bombs (in every format) before they are decoded.

    With the model's ``spec``, a large JPEG is decoded at reduced size, as everywhere else.
    """
    if not data:
        raise BadImage("empty body: send a JPEG or PNG (multipart field 'file', or the raw bytes)")
    size = admit(data, dataclasses.replace(DEFAULT_LIMITS, max_pixels=max_pixels))
    buf = np.frombuffer(data, np.uint8)
    try:
        image = decode_admitted(buf, size, spec)  # transparent images on white, as everywhere
    except cv2.error:
        image = None
    if image is None:
        raise BadImage("not a decodable image (corrupt, or a JPEG, PNG, WebP or BMP was expected)", 415)
    if image.shape[0] * image.shape[1] > max_pixels:  # a decoder that disagrees with its header
        raise BadImage(f"image has {image.shape[0] * image.shape[1]:,} pixels; the limit is {max_pixels:,}", 413)
    return image
