"""The threat model for images: what a hostile or broken file can do to the decoder and preprocessing.

Threats, and what must hold for each (torch-free: runs in the device environment too):

1. A header that lies small: it must agree with what the decoder produces (property over every
   accepted format, size, channel count and bit depth).
2. A decompression bomb: a few hundred bytes declaring billions of pixels, in every format, is
   refused before decoding; peak memory stays flat (measured in a fresh process).
3. An extreme aspect ratio (1 x N): refused from the header, and for camera/video frames in
   ``preprocess`` itself, so resizing never allocates more than a bounded amount.
4. Random corruption of valid files: only the project's own error (``FloraEdgeError``) comes
   out, never a crash or another exception type, and allocation stays bounded.
5. Unknown formats are refused, not decoded blindly.
6. Model metadata and sidecar files that inflate (a zip member declaring, or inflating to, gigabytes;
   millions of zip entries; a sparse 64 GiB spec.json): refused from the declared size first, with
   flat memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.admission import DEFAULT_LIMITS, ImageLimits, ImageRejected, admit
from edge_runtime.errors import FloraEdgeError
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.serve.images import BadImage, decode_upload
from edge_runtime.spec import IMAGENET_SPEC
from tests.conftest import REPO

# Test limits: a "largest legitimate input" of 2 MP (6 MB decoded), so the bound below is 24 MB.
LIMITS = ImageLimits(max_pixels=2_000_000)
ALLOCATION_BOUND = 4 * LIMITS.max_pixels * 3

FORMATS = {  # name -> (extension, encoder parameters)
    "jpeg": (".jpg", []),
    "png": (".png", []),
    "bmp": (".bmp", []),
    "webp-lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "webp-lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "tiff": (".tiff", []),
    "gif": (".gif", []),
    "ppm": (".ppm", []),
    "pgm": (".pgm", []),
    "pam": (".pam", []),
    "sun-raster": (".ras", []),
}
SLOW_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(fmt: str, image: np.ndarray) -> bytes | None:
    ext, params = FORMATS[fmt]
    if fmt == "pgm" and image.ndim == 3:
        image = image[:, :, 0]
    try:
        ok, data = cv2.imencode(ext, image, params)
    except cv2.error:
        return None
    return data.tobytes() if ok else None


@st.composite
def images(draw, max_side: int = 300):
    """A random image: any size (aspect ratios up to 1:max_side), 1/3/4 channels, 8 or 16 bits."""
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    channels = draw(st.sampled_from([1, 3, 4]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    seed = draw(st.integers(0, 2**16))
    top = 255 if dtype == np.uint8 else 65535
    array = np.random.default_rng(seed).integers(0, top, (h, w, channels), dtype=np.int64).astype(dtype)
    return array[:, :, 0] if channels == 1 else array


def peak_allocation(fn) -> tuple[object, int]:
    """(result or the exception raised, peak bytes allocated through Python/NumPy meanwhile)."""
    tracemalloc.start()
    try:
        result = fn()
    except Exception as exc:  # returned, so the caller can assert its type
        result = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, peak


# --- 1. headers that lie ------------------------------------------------------------------------


@SLOW_SETTINGS
@given(fmt=st.sampled_from(sorted(FORMATS)), image=images())
def test_the_header_size_is_the_decoded_size_in_every_format(fmt, image):
    data = encode(fmt, image)
    if data is None:  # a combination this encoder does not write (e.g. 16-bit GIF)
        return
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:  # the decoder refuses what its own encoder wrote (e.g. 16-bit PAM)
        return
    h, w = image.shape[:2]
    assert admit(data, ImageLimits(max_aspect=1e9)) == (w, h) == (decoded.shape[1], decoded.shape[0])


# --- 2. decompression bombs ------------------------------------------------------------------------


def _patch(data: bytes, offset: int, packed: bytes) -> bytes:
    return data[:offset] + packed + data[offset + len(packed) :]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _tiff_with_size(w: int, h: int) -> bytes:
    data = encode("tiff", np.zeros((8, 8, 3), np.uint8))
    offset = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[offset : offset + 2])[0]):
        entry = offset + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):
            value = w if tag == 256 else h
            data = _patch(data, entry + 8, struct.pack("<H" if kind == 3 else "<I", value))
    return data


def bomb(fmt: str, w: int, h: int) -> bytes:
    """A small file of format ``fmt`` whose header declares ``w`` x ``h`` (everything else left valid)."""
    small = np.zeros((8, 8, 3), np.uint8)
    if fmt == "png":
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    if fmt == "jpeg":
        data = encode("jpeg", small)
        sof = data.index(b"\xff\xc0")
        return _patch(data, sof + 5, struct.pack(">HH", h, w))
    if fmt == "bmp":
        return _patch(encode("bmp", small), 18, struct.pack("<ii", w, h))
    if fmt == "webp-lossy":
        return _patch(encode(fmt, small), 26, struct.pack("<HH", w & 0x3FFF, h & 0x3FFF))
    if fmt == "webp-lossless":
        data = encode(fmt, small)
        bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)
        return _patch(data, 21, struct.pack("<I", bits | (w - 1) | ((h - 1) << 14)))
    if fmt == "webp-extended":
        inner = encode("webp-lossy", small)[12:]
        vp8x = (
            b"VP8X"
            + struct.pack("<I", 10)
            + b"\0\0\0\0"
            + (w - 1).to_bytes(3, "little")
            + (h - 1).to_bytes(3, "little")
        )
        body = b"WEBP" + vp8x + inner
        return b"RIFF" + struct.pack("<I", len(body)) + body
    if fmt == "tiff":
        return _tiff_with_size(w, h)
    if fmt == "gif":
        return _patch(encode("gif", small), 6, struct.pack("<HH", w, h))
    if fmt in ("ppm", "pgm"):
        magic, depth = (b"P6", 3) if fmt == "ppm" else (b"P5", 1)
        return magic + b"\n# a comment\n%d %d\n255\n" % (w, h) + b"\0" * 64 * depth
    if fmt == "pam":
        return b"P7\nWIDTH %d\nHEIGHT %d\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" % (w, h) + b"\0" * 192
    if fmt == "sun-raster":
        return _patch(encode("sun-raster", small), 4, struct.pack(">II", w, h))
    raise ValueError(fmt)


BOMB_FORMATS = sorted({*FORMATS, "webp-extended"})
# The largest size each header can declare (WebP: 14 bits, GIF/TIFF SHORT/JPEG: 16 bits).
BOMB_SIZE = {"webp-lossy": 16383, "webp-lossless": 16384, "gif": 65535, "tiff": 65535, "jpeg": 65500}


@pytest.mark.parametrize("fmt", BOMB_FORMATS)
def test_a_decompression_bomb_is_refused_before_decoding_in_every_format(fmt, tmp_path):
    side = BOMB_SIZE.get(fmt, 60_000)
    data = bomb(fmt, side, side)
    assert len(data) < 4096
    with pytest.raises(ImageRejected, match="pixels|side") as refused:
        admit(data)
    assert refused.value.status == 413
    (tmp_path / "bomb").write_bytes(data)
    with pytest.raises(FloraEdgeError, match="pixels|side"):
        read_image_bgr(tmp_path / "bomb")
    with pytest.raises(BadImage) as upload:
        decode_upload(data, max_pixels=DEFAULT_LIMITS.max_pixels)
    assert upload.value.status == 413


def test_bombs_leave_peak_memory_flat(tmp_path):
    """Every bomb read in a fresh process: its peak RSS grows by less than one legitimate image would need."""
    for fmt in BOMB_FORMATS:
        side = BOMB_SIZE.get(fmt, 60_000)
        (tmp_path / fmt).write_bytes(bomb(fmt, side, side))
    code = (
        "import json, sys; from pathlib import Path\n"
        "from edge_runtime.preprocess import read_image_bgr\n"
        "def hwm():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024\n"
        "base, refused = hwm(), 0\n"
        "for p in sorted(Path(sys.argv[1]).iterdir()):\n"
        "    try:\n"
        "        read_image_bgr(p)\n"
        "    except ValueError:\n"
        "        refused += 1\n"
        "print(json.dumps({'growth': hwm() - base, 'refused': refused}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    report = json.loads(result.stdout)
    assert report["refused"] == len(BOMB_FORMATS)
    assert report["growth"] < 16 * 1024 * 1024, report  # decoding the smallest of them would take > 700 MB


# --- 3. extreme aspect ratios ----------------------------------------------------------------------


@pytest.mark.parametrize("w, h", [(1, 30_000), (30_000, 1), (2, 20_000), (200, 1)])
def test_a_1xN_image_is_refused_from_its_header(w, h):
    with pytest.raises(ImageRejected, match="aspect ratio") as refused:
        admit(bomb("png", w, h))
    assert refused.value.status == 413


SIDE, THIN = st.integers(0, 3000), st.integers(0, 8)
SIZES = st.one_of(st.tuples(SIDE, SIDE), st.tuples(THIN, SIDE), st.tuples(SIDE, THIN))  # any, tall, wide


@SLOW_SETTINGS
@given(
    size=SIZES,
    channels=st.sampled_from([None, 1, 2, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
)
def test_preprocess_of_any_frame_is_bounded_and_only_raises_our_error(size, channels, dtype):
    """Camera and video frames have no header: ``preprocess`` itself refuses what it cannot bound."""
    h, w = size
    if h * w > LIMITS.max_pixels:
        h = max(1, LIMITS.max_pixels // max(w, 1))
    frame = np.zeros((h, w) if channels is None else (h, w, channels), dtype)
    out, peak = peak_allocation(lambda: preprocess(frame, IMAGENET_SPEC))
    if isinstance(out, Exception):
        assert isinstance(out, FloraEdgeError), repr(out)
    else:
        assert out.shape == IMAGENET_SPEC.input_shape and out.dtype == np.float32
    assert peak <= ALLOCATION_BOUND, (h, w, peak)


# --- 4. corrupted files ------------------------------------------------------------------------


@SLOW_SETTINGS
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    image=images(max_side=120),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_a_corrupted_file_gives_an_image_or_our_error(fmt, image, edits, cut, tmp_path_factory):
    data = encode(fmt, image)
    if data is None:
        return
    corrupt = bytearray(data)
    for where, value in edits:
        corrupt[int(where * len(corrupt))] = value
    corrupt = bytes(corrupt[: max(1, int(cut * len(corrupt)))] if cut is not None else corrupt)
    path = tmp_path_factory.mktemp("fuzz") / f"image{FORMATS[fmt][0]}"
    path.write_bytes(corrupt)
    out, peak = peak_allocation(lambda: preprocess(read_image_bgr(path, limits=LIMITS), IMAGENET_SPEC))
    if isinstance(out, Exception):
        assert isinstance(out, FloraEdgeError), repr(out)
    else:
        assert out.shape == IMAGENET_SPEC.input_shape
    assert peak <= ALLOCATION_BOUND
    try:
        decoded = decode_upload(corrupt, max_pixels=LIMITS.max_pixels)
        assert decoded.ndim == 3 and decoded.shape[2] == 3 and decoded.dtype == np.uint8
    except BadImage as exc:
        assert exc.status in (400, 413, 415)


@SLOW_SETTINGS
@given(fmt=st.sampled_from(sorted(FORMATS)), image=images(max_side=200))
def test_every_accepted_image_reads_as_bgr_uint8_and_preprocesses(fmt, image, tmp_path_factory):
    data = encode(fmt, image)
    if data is None or cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
        return
    path = tmp_path_factory.mktemp("ok") / f"image{FORMATS[fmt][0]}"
    path.write_bytes(data)
    h, w = image.shape[:2]
    if max(h, w) / min(h, w) > LIMITS.max_aspect:
        with pytest.raises(FloraEdgeError, match="aspect ratio"):
            read_image_bgr(path, limits=LIMITS)
        return
    bgr = read_image_bgr(path, limits=LIMITS)
    assert bgr.shape == (h, w, 3) and bgr.dtype == np.uint8
    assert preprocess(bgr, IMAGENET_SPEC).shape == IMAGENET_SPEC.input_shape


# --- 5. unknown formats ------------------------------------------------------------------------


def _hdr() -> bytes:
    return cv2.imencode(".hdr", np.ones((8, 8, 3), np.float32))[1].tobytes()


@pytest.mark.parametrize(
    "data",
    [
        b"plain text",
        b"\0" * 100,
        b"PF\n60000 60000\n-1\n" + b"\0" * 64,  # PFM: decoded to 2-D floats, not accepted
        b"\x00\x00\x00\x20ftypavif" + b"\0" * 64,  # AVIF: its size is deep in the boxes
        b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 64,  # JPEG 2000
    ],
    ids=["text", "zeros", "pfm", "avif", "jpeg2000"],
)
def test_formats_whose_size_we_cannot_read_are_refused_not_decoded(data):
    with pytest.raises(ImageRejected, match="not an image format") as refused:
        admit(data)
    assert refused.value.status == 415


def test_radiance_hdr_is_refused_too():
    with pytest.raises(ImageRejected, match="not an image format"):
        admit(_hdr())


@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0\xff\xff\xff\xff"]
)
def test_truncated_headers_are_refused(data):
    with pytest.raises(ImageRejected, match="truncated or malformed"):
        admit(data)


def test_limits_are_one_object_shared_by_every_reader():
    """serve's --max-pixels replaces only the pixel count; every other limit is the shared default."""
    served = dataclasses.replace(DEFAULT_LIMITS, max_pixels=10)
    assert served.max_aspect == DEFAULT_LIMITS.max_aspect and served.max_side == DEFAULT_LIMITS.max_side
    with pytest.raises(BadImage, match="pixels"):
        decode_upload(encode("png", np.zeros((4, 4, 3), np.uint8)), max_pixels=10)


# --- 6. model metadata that inflates: every read bounded before it happens ------------------------


def _zip_bytes(files: dict[str, bytes], compression=None) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression or zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def _spec_json() -> bytes:
    return json.dumps({"spec": IMAGENET_SPEC.to_dict(), "info": {}}).encode()


def _lie_about_sizes(data: bytes, declared: int) -> bytes:
    """The zip with every member's uncompressed size (local header and central directory) set to ``declared``."""
    data = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.find(signature)
        while start != -1:
            data[start + offset : start + offset + 4] = struct.pack("<I", declared)
            start = data.find(signature, start + 4)
    return bytes(data)


ZIP_BOMBS = {
    "member-declares-100MB": ({"floraedge.json": _spec_json() + b" " * 100_000_000}, None, "declares 100,0"),
    "labels-declare-100MB": (
        {"floraedge.json": _spec_json(), "labels.txt": b"a\n" * 50_000_000},
        None,
        "declares 100,0",
    ),
    "2000-members": ({f"f{i}": b"" for i in range(2000)}, None, "declares 2,000 members"),
    "member-lies-small": ({"floraedge.json": _spec_json() + b" " * 100_000_000}, 1000, "malformed|Bad CRC"),
}


@pytest.mark.parametrize("files, declared, error", list(ZIP_BOMBS.values()), ids=list(ZIP_BOMBS))
def test_a_model_whose_metadata_zip_inflates_is_refused_with_flat_memory(tmp_path, files, declared, error):
    from edge_runtime.metadata import MetadataError, from_tflite_zip

    data = _zip_bytes(files)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3" + b"\0" * 60 + (data if declared is None else _lie_about_sizes(data, declared)))
    assert model.stat().st_size < 1_000_000  # a small file ...
    result, peak = peak_allocation(lambda: from_tflite_zip(model))
    assert isinstance(result, MetadataError) and re.search(error, str(result)), result
    assert "\n" not in str(result) and peak < 20_000_000, peak  # ... that never inflates past the limit


@pytest.mark.parametrize("name", ["model.onnx.json", "spec.json", "labels.txt"])
def test_huge_sidecar_files_are_refused_unread(tmp_path, name):
    from edge_runtime.metadata import MetadataError, from_sidecar

    model = tmp_path / "model.onnx"
    (tmp_path / "spec.json").write_text(IMAGENET_SPEC.to_json())
    (tmp_path / name).touch()
    os.truncate(tmp_path / name, 2**36)  # 64 GiB of holes: reading it would end the process
    result, peak = peak_allocation(lambda: from_sidecar(model))
    assert isinstance(result, MetadataError) and "over the 16,777,216-byte limit" in str(result), result
    assert peak < 1_000_000


def test_a_huge_or_special_marker_file_is_not_read(tmp_path):
    from edge_runtime.outdir import MARKER, marker_kind

    (tmp_path / MARKER).touch()
    os.truncate(tmp_path / MARKER, 2**36)
    assert peak_allocation(lambda: marker_kind(tmp_path))[0] is None
    (tmp_path / MARKER).unlink()
    os.mkfifo(tmp_path / MARKER)  # a FIFO without a writer: a plain open() would block forever
    assert marker_kind(tmp_path) is None


def test_a_file_that_grows_past_its_limit_while_read_is_refused(tmp_path, monkeypatch):
    from edge_runtime import bounded

    path = tmp_path / "grows.json"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat
    monkeypatch.setattr(bounded.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 10, *real_fstat(fd)[7:])))
    with pytest.raises(bounded.TooLargeError, match="grew past the 50-byte limit"):
        bounded.read_bounded(path, 50)  # st_size said 10; the read still stops at 51 bytes
