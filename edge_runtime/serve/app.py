"""The Starlette app: a single page, ``POST /v1/classify``, ``GET /v1/model``, ``GET /healthz``, OpenAPI.

Decoding, ``preprocess()`` and the model run off the event loop in one thread pool that has a
thread more than there are model ``workers``: one request's JPEG decodes while another's
inference runs, and a request needs a single hop from the event loop.
A burst of requests queues up to ``queue`` waiting requests, beyond that the answer is 503 with
``Retry-After`` instead of unbounded memory. Connections are kept alive (uvicorn's HTTP/1.1 default).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from edge_runtime.admission import DEFAULT_LIMITS, header_size
from edge_runtime.backends import load
from edge_runtime.bounded import read_bounded, read_text_bounded
from edge_runtime.classify import Classifier
from edge_runtime.metadata import file_sha256
from edge_runtime.preprocess import preprocess
from edge_runtime.serve.config import ServeConfig
from edge_runtime.serve.images import BadImage, decode_upload
from edge_runtime.serve.openapi import openapi_spec


def mjpeg_frames(folder: Path, interval: float = 0.1):
    """multipart/x-mixed-replace parts: the newest frame `floraedge run --publish` wrote, when it changes."""
    last = None

    async def stream():
        nonlocal last
        while True:
            path = folder / "latest.jpg"
            stamp = path.stat().st_mtime_ns if path.exists() else None
            if stamp is not None and stamp != last:
                last = stamp
                data = read_bounded(path, DEFAULT_LIMITS.max_bytes, "camera frame")  # never more than an image
                yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n"
            await asyncio.sleep(interval)

    return stream()


def model_description(path: Path, backend) -> dict:
    info = backend.info
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "format": path.suffix[1:],
        "precision": info.info.get("precision", "unknown"),
        "arch": info.info.get("arch", "unknown"),
        "backend": backend.name,
        "labels": list(info.labels),
        "spec": info.spec.to_dict(),
    }


class Gate:
    """Admission control: at most ``workers + queue`` requests inside; the rest get 503."""

    def __init__(self, workers: int, queue: int):
        self.capacity, self.inside = workers + queue, 0

    def __enter__(self):
        if self.inside >= self.capacity:
            raise HTTPException(503, "busy: too many requests queued", headers={"Retry-After": "1"})
        self.inside += 1

    def __exit__(self, *exc):
        self.inside -= 1


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {int(declared):,} bytes is over the {limit:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body is over the {limit:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image from a multipart upload (field 'file') or from a raw image body."""
    body = await read_body(request, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body
    request._body = body  # Starlette parses the form from the cached body: the limit above still holds
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "multipart upload has no file field named 'file'")
    return await upload.read()


async def receive_image(request: Request, config: ServeConfig) -> bytes:
    """The upload, received within ``config.body_timeout`` seconds: a slow client gets 408 and its connection closed."""
    try:
        return await asyncio.wait_for(image_bytes(request, config.max_body), config.body_timeout)
    except asyncio.TimeoutError:
        message = f"the request body did not arrive within {config.body_timeout:g} s"
        raise HTTPException(408, message, headers={"Connection": "close"}) from None
    except ClientDisconnect:  # the client left: nobody reads this answer, but no ASGI traceback is logged
        raise HTTPException(400, "client disconnected before sending the whole body") from None
    except asyncio.CancelledError:  # shutdown's grace period ended mid-upload: answer instead of a logged traceback
        raise HTTPException(503, "the server is shutting down", headers={"Connection": "close"}) from None


def original_size(data: bytes, image) -> tuple[int, int]:
    """(width, height) of the upload as sent: a JPEG decoded at reduced size reports its full size."""
    h, w = image.shape[:2]
    size = header_size(data)
    if size is None or min(size) < min(h, w):
        return w, h
    return size if (size[0] >= size[1]) == (w >= h) else (size[1], size[0])  # EXIF rotation swaps the sides


class Service:
    """The model behind the routes: one classifier, a decode/inference pool and the admission gate."""

    def __init__(self, config: ServeConfig):
        self.config = config
        backend = load(config.model, config.backend, threads=config.threads)
        self.classifier = Classifier(backend, k=config.top_k)
        self.description = model_description(Path(config.model), backend) | {"camera": config.camera is not None}
        self.pool = ThreadPoolExecutor(max_workers=config.workers + 1, thread_name_prefix="decode-infer")
        self.gate = Gate(config.workers, config.queue)
        self.model_slots = threading.BoundedSemaphore(config.workers)  # concurrent inferences
        self.page = files("edge_runtime.serve").joinpath("index.html").read_text(encoding="utf-8")

    def check_token(self, request: Request) -> None:
        if self.config.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.config.token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def infer(self, data: bytes) -> dict:
        spec = self.classifier.spec
        t0 = time.perf_counter()
        image = decode_upload(data, max_pixels=self.config.max_pixels, spec=spec)
        t1 = time.perf_counter()
        batch = preprocess(image, spec)
        t2 = time.perf_counter()
        with self.model_slots:
            queue_ms = (time.perf_counter() - t2) * 1e3
            prediction = self.classifier.predict_batch(batch, preprocess_ms=(t2 - t1) * 1e3)
        width, height = original_size(data, image)
        return prediction.to_dict() | {
            "decode_ms": round((t1 - t0) * 1e3, 3),
            "queue_ms": round(queue_ms, 3),
            "width": width,
            "height": height,
        }

    async def classify(self, request: Request) -> JSONResponse:
        self.check_token(request)
        start = time.perf_counter()
        data = await receive_image(request, self.config)  # before the gate: a slow upload holds no inference slot
        with self.gate:
            try:
                result = await asyncio.get_running_loop().run_in_executor(self.pool, self.infer, data)
            except BadImage as exc:
                raise HTTPException(exc.status, str(exc)) from exc
        result["total_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        described = {"model": self.description["file"], "precision": self.description["precision"]}
        return JSONResponse(described | result)

    async def model(self, request: Request) -> JSONResponse:
        self.check_token(request)
        return JSONResponse(self.description)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.description["file"]})

    async def index(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self.page)

    async def openapi(self, request: Request) -> JSONResponse:
        return JSONResponse(openapi_spec(self.config))

    async def camera_frame(self, request: Request) -> StreamingResponse:
        self.check_token(request)
        camera = self.config.camera
        if camera is None:
            raise HTTPException(
                404, "no camera: start the server with --camera DIR (the --publish folder of `floraedge run`)"
            )
        return StreamingResponse(mjpeg_frames(camera), media_type="multipart/x-mixed-replace; boundary=frame")

    async def camera_result(self, request: Request) -> JSONResponse:
        self.check_token(request)
        latest = self.config.camera / "latest.json" if self.config.camera else None
        if latest is None or not latest.exists():
            raise HTTPException(404, "no camera result yet: is `floraedge run --publish DIR` running?")
        return JSONResponse(json.loads(read_text_bounded(latest, what="camera result")))

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index),
            Route("/healthz", self.health),
            Route("/v1/model", self.model),
            Route("/v1/classify", self.classify, methods=["POST"]),
            Route("/openapi.json", self.openapi),
            Route("/camera.mjpg", self.camera_frame),
            Route("/v1/camera", self.camera_result),
        ]


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": exc.detail, "status": exc.status_code}, exc.status_code, headers=exc.headers)


def create_app(config: ServeConfig) -> Starlette:
    """The web page and the JSON API for the model ``config`` names."""
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.pool.shutdown(wait=False)

    app = Starlette(routes=service.routes(), exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.gate = service.gate
    return app
