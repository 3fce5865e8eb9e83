"""Image inputs every command reads alike: every accepted format is taken from a folder (none skipped
silently), transparent pixels are white (as a viewer shows them, not black), and serve's
``--max-pixels`` holds in every step that checks a size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.admission import IMAGE_SUFFIXES, ImageLimits, ImageRejected
from edge_runtime.preprocess import decode_bgr, may_be_transparent, preprocess
from edge_runtime.serve.images import decode_upload
from edge_runtime.spec import PreprocessSpec
from tests.tiny_models import tiny_onnx

REPO = Path(__file__).resolve().parents[1]
SPEC = PreprocessSpec(crop_size=32, resize_size=36)


def half_transparent(h: int = 64, w: int = 48) -> np.ndarray:
    """BGRA: the top half fully transparent (its stored colour black, as most editors leave it), the rest red."""
    image = np.zeros((h, w, 4), np.uint8)
    image[h // 2 :] = (0, 0, 220, 255)
    return image


ALPHA_FORMATS = {
    "png": (".png", []),
    "webp-lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "tiff": (".tiff", []),
    "gif": (".gif", []),
}


@pytest.mark.parametrize("fmt", ALPHA_FORMATS)
def test_transparent_pixels_are_white_in_every_decoder(fmt):
    ext, params = ALPHA_FORMATS[fmt]
    ok, data = cv2.imencode(ext, half_transparent(), params)
    assert ok and may_be_transparent(data)
    for image in (decode_bgr(data.tobytes()), decode_upload(data.tobytes(), max_pixels=10**6)):
        assert image.shape == (64, 48, 3)
        assert (image[:32] == 255).all(), image[0, 0]  # white where transparent
        assert image[40, 10, 2] >= 200 and image[40, 10, :2].max() <= 8  # the opaque part red (GIF: its palette's)


def test_partial_transparency_is_blended_with_white():
    image = half_transparent()
    image[:, :, 3] = 128
    image[:, :, :3] = (0, 0, 200)
    ok, data = cv2.imencode(".png", image)
    out = decode_bgr(data.tobytes())
    assert np.abs(out[0, 0].astype(int) - [127, 127, 227]).max() <= 1  # (c * 128 + 255 * 127) / 255


def test_a_palette_png_with_a_transparent_index_is_white(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    image = pil.new("P", (20, 10), 1)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 20, 5))  # the top half is index 0, the transparent one
    image.save(tmp_path / "p.png", transparency=0)
    data = (tmp_path / "p.png").read_bytes()
    assert may_be_transparent(np.frombuffer(data, np.uint8))  # found by its tRNS chunk
    out = decode_bgr(data)
    assert (out[:5] == 255).all() and tuple(out[9, 0]) == (0, 0, 200)


def test_opaque_images_are_decoded_once():
    """Only a header that allows transparency costs the second decode."""
    opaque = np.full((16, 16, 3), 90, np.uint8)
    for ext, params in (
        (".png", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        (".jpg", []),
        (".bmp", []),
    ):
        ok, data = cv2.imencode(ext, opaque, params)
        assert ok and not may_be_transparent(data), ext


def test_classify_dir_takes_every_accepted_format_and_says_what_it_passed_over(tmp_path):
    model = tiny_onnx(tmp_path / "model.onnx")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
    names = ["a.gif", "b.tiff", "c.tif", "d.ppm", "e.webp", "sub/f.png", "g.JPG", "h.bmp", "i.pgm"]
    for name in names:
        pixels = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if name.endswith(".pgm") else image
        assert cv2.imwrite(str(photos / name), pixels), name
    (photos / "notes.txt").write_text("not an image")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "floraedge", "classify", "--model", str(model), str(photos), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = sorted(Path(json.loads(line)["image"]).relative_to(photos).as_posix() for line in done.stdout.splitlines())
    assert seen == sorted(names)
    assert "notes.txt" in done.stderr and "not classified" in done.stderr
    assert {Path(n).suffix.lower() for n in names} <= IMAGE_SUFFIXES


def test_preprocess_checks_the_limits_the_image_was_admitted_under():
    frame = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ImageRejected, match="over the 100-pixel limit"):
        preprocess(frame, SPEC, limits=ImageLimits(max_pixels=100))
    assert preprocess(frame, SPEC).shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_serve_max_pixels_above_the_default_is_honoured_through_preprocess(tmp_path):
    """A 41 MP photo under `serve --max-pixels 50000000`: admitted, decoded, and classified (the default limit,
    40 MP, must not refuse it later on)."""
    from starlette.testclient import TestClient

    from edge_runtime.serve.app import ServeConfig, create_app

    ok, data = cv2.imencode(".png", np.zeros((6400, 6400, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    model = tiny_onnx(tmp_path / "model.onnx")
    with TestClient(create_app(ServeConfig(model=model, max_pixels=50_000_000)), base_url="http://localhost") as client:
        answer = client.post("/v1/classify", content=data.tobytes(), headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["width"], answer.json()["height"]) == (6400, 6400)
    with TestClient(create_app(ServeConfig(model=model, max_pixels=40_000_000)), base_url="http://localhost") as client:
        answer = client.post("/v1/classify", content=data.tobytes(), headers={"content-type": "image/png"})
    assert answer.status_code == 413 and "40,000,000" in answer.json()["error"]
