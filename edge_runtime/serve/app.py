"""The Starlette app: a single page, ``POST /v1/classify``, ``GET /v1/model``, ``GET /healthz``, OpenAPI.

Decoding, ``preprocess()`` and the model run off the event loop in one thread pool that has a
thread more than there are model ``workers``: one request's JPEG decodes while another's
inference runs, and a request needs a single hop from the event loop.
A burst of requests queues up to ``queue`` waiting requests, beyond that the answer is 503 with
``Retry-After`` instead of unbounded memory. Connections are kept alive (uvicorn's HTTP/1.1 default).

Two small ASGI layers wrap the routes: ``Guard`` (the ``Host`` check against DNS rebinding, and the
count of requests in progress: a connection still sending its head is not counted, see connections.py,
and an upload still arriving counts by its bytes) and ``json_errors``, which turns any exception into
one line of JSON and one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import html
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from edge_runtime.admission import DEFAULT_LIMITS, header_size
from edge_runtime.backends import load
from edge_runtime.bounded import TooLargeError, read_bounded
from edge_runtime.classify import Classifier
from edge_runtime.errors import FloraEdgeError
from edge_runtime.foreign import ModelOverrides
from edge_runtime.metadata import describe, file_sha256
from edge_runtime.preprocess import preprocess
from edge_runtime.serve.config import ServeConfig
from edge_runtime.serve.images import BadImage, decode_upload
from edge_runtime.serve.openapi import openapi_spec

LOG = logging.getLogger("uvicorn.error")
MAX_CAMERA_RESULT = 1024 * 1024  # bytes of latest.json read; `floraedge run` writes a few hundred
MAX_CAMERA_FRAME = 32 * 1024 * 1024  # bytes of latest.jpg sent as one part of the camera stream
CAMERA_STREAMS = 8  # concurrent camera streams: each holds a request in progress for as long as it is watched


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
                data = None
                with contextlib.suppress(ValueError):  # over the limit: not a frame `floraedge run` wrote
                    data = read_if_present(path, MAX_CAMERA_FRAME, "camera frame")
                if data is None:
                    await asyncio.sleep(interval)
                    continue
                yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n"
            await asyncio.sleep(interval)

    return stream()


def read_if_present(path: Path, limit: int, what: str) -> bytes | None:
    """``path``'s bytes, or None when it is not there; a TooLargeError (a ValueError) when it is over ``limit``
    bytes or not a regular file, refused before it is read."""
    try:
        return read_bounded(path, limit, what)
    except TooLargeError as exc:
        if isinstance(exc.__cause__, FileNotFoundError) or path.is_dir():  # not written yet (or not by `run`)
            return None
        raise


def camera_result(camera: Path | None) -> dict:
    """The newest result `floraedge run --publish` wrote to ``camera``: 404 when there is none, 502 when malformed."""
    missing = HTTPException(404, "no camera result yet: is `floraedge run --publish DIR` running?")
    if camera is None:
        raise missing
    try:
        data = read_if_present(camera / "latest.json", MAX_CAMERA_RESULT, "camera result")
        result = None if data is None else json.loads(data)
    except ValueError as exc:  # too large, no JSON or no UTF-8: not what `floraedge run` writes
        raise HTTPException(502, f"the camera result file is unreadable ({one_line(str(exc), 120)})") from None
    if result is None:
        raise missing
    if not isinstance(result, dict):
        raise HTTPException(
            502, "the camera result file holds no JSON object: is `floraedge run --publish` writing it?"
        )
    return result


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
        "output": info.output,
        "sources": dict(info.sources),  # where the spec, labels and output came from (edge_runtime.foreign)
    }


class Gate:
    """Admission control: at most ``workers + queue`` requests inside; the rest get 503."""

    def __init__(self, workers: int, queue: int, what: str = "too many requests queued"):
        self.capacity, self.inside, self.what = workers + queue, 0, what

    def __enter__(self):
        if self.inside >= self.capacity:
            raise HTTPException(503, f"busy: {self.what}", headers={"Retry-After": "1"})
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
    media_type, _, parameters = request.headers.get("content-type", "").partition(";")
    if media_type.strip().lower() != "multipart/form-data":
        return body
    # Media types are case-insensitive, but some python-multipart versions compare them as written:
    # the form is parsed from a copy of the request whose media type is lowercase (the boundary kept as sent).
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", b"multipart/form-data;" + parameters.encode("latin-1")))
    form_request = Request({**request.scope, "headers": headers})
    form_request._body = body  # Starlette parses the form from the cached body: the limit above still holds
    form = await form_request.form()
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
        backend = load(config.model, config.backend, threads=config.threads, overrides=ModelOverrides.of(config))
        for note in backend.info.notes:  # the user's options replaced what the file says: said once, at start
            print(f"note: {note}", file=sys.stderr)
        self.classifier = Classifier(backend, k=config.top_k)
        self.description = model_description(Path(config.model), backend) | {"camera": config.camera is not None}
        self.pool = ThreadPoolExecutor(max_workers=config.workers + 1, thread_name_prefix="decode-infer")
        self.gate = Gate(config.workers, config.queue)
        self.limits = dataclasses.replace(DEFAULT_LIMITS, max_pixels=config.max_pixels)
        self.model_slots = threading.BoundedSemaphore(config.workers)  # concurrent inferences
        self.camera_streams = Gate(CAMERA_STREAMS, 0, "too many camera streams open")
        self.host_allowed = allowed_hosts(config.allowed_hosts)
        page = files("edge_runtime.serve").joinpath("index.html").read_text(encoding="utf-8")
        # the dataset's name comes from the model file: escaped, so a crafted name cannot inject markup
        self.page = page.replace("__MODEL_TITLE__", html.escape(describe(backend.info)))

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
        batch = preprocess(image, spec, limits=self.limits)  # --max-pixels, not the default, here too
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
        if self.camera_streams.inside >= self.camera_streams.capacity:  # answered here: a stream's 503 comes too late
            raise HTTPException(503, "busy: too many camera streams open", headers={"Retry-After": "5"})
        return StreamingResponse(
            self.watched(mjpeg_frames(camera)), media_type="multipart/x-mixed-replace; boundary=frame"
        )

    async def watched(self, frames):
        """The camera stream, holding one of the ``CAMERA_STREAMS`` places until the viewer leaves."""
        # streams starting at once may pass the check in camera_frame together: max_connections bounds them
        with self.camera_streams:
            async for part in frames:
                yield part

    async def camera_result(self, request: Request) -> JSONResponse:
        self.check_token(request)
        return JSONResponse(camera_result(self.config.camera))

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


def allowed_hosts(extra: tuple[str, ...]):
    """Whether a ``Host`` header names this server: an IP address, localhost, this machine's name, or ``extra``.

    A web page from elsewhere can make a browser send requests here under its own domain name
    (DNS rebinding); those carry that name in ``Host`` and are refused. "*" in ``extra`` allows any
    name (behind a proxy that checks it).
    """
    name = socket.gethostname().lower()
    names = {"localhost", name, f"{name}.local", *(h.lower().rstrip(".") for h in extra)}

    def allowed(host: str | None) -> bool:
        if host is None or "*" in names:
            return True  # HTTP/1.0 without Host: no browser sends that
        host = host.lower()
        if host.startswith("["):  # [IPv6]:port
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        host = host.rstrip(".")
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return True
        return host in names or host.endswith(".localhost")

    return allowed


async def send_json_error(send, status: int, message: str, headers: dict | None = None) -> None:
    response = JSONResponse({"error": message, "status": status}, status, headers=headers)
    await response({"type": "http"}, None, send)


def busy(message: str) -> HTTPException:
    return HTTPException(503, f"busy: {message}", headers={"Retry-After": "1", "Connection": "close"})


class Guard:
    """The outer ASGI layer: refuses a foreign ``Host`` (400), and past ``max_connections`` requests in progress, 503.

    A request still receiving its upload counts only by the bytes it has received: all uploads together
    may hold ``max_connections x max_body`` bytes. So connections trickling a body (each is cut off at
    ``body_timeout``) do not keep real clients out, and memory stays bounded as before.
    """

    def __init__(self, app, *, service: Service):
        self.app, self.config, self.host_allowed = app, service.config, service.host_allowed
        self.inside = 0  # requests in progress past their upload
        self.buffered = 0  # bytes of upload received by the requests in progress
        self.budget = self.config.max_connections * self.config.max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if not self.host_allowed(host):
            message = f"Host {host!r} is not a name of this server; start it with --allowed-hosts NAME to allow it"
            return await send_json_error(send, 400, message, {"Connection": "close"})
        if self.inside >= self.config.max_connections:
            error = self.too_many()
            return await send_json_error(send, error.status_code, error.detail, error.headers)
        request = Admitted(self, expects_body(scope["headers"]))
        try:
            await self.app(scope, request.receive_from(receive), send)
        finally:
            request.leave()

    def too_many(self) -> HTTPException:
        return busy(f"{self.config.max_connections} requests in progress (--max-connections)")


def expects_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class Admitted:
    """One request's share of the ``Guard``: its upload bytes while it receives, then a place among those inside."""

    def __init__(self, guard: Guard, receiving: bool):
        self.guard, self.receiving, self.bytes = guard, receiving, 0
        if not receiving:
            guard.inside += 1

    def receive_from(self, receive):
        async def counted():
            message = await receive()
            if self.receiving and message["type"] == "http.request":
                self.take(len(message.get("body", b"")), more=message.get("more_body", False))
            return message

        return counted

    def take(self, size: int, *, more: bool) -> None:
        guard = self.guard
        if guard.buffered + size > guard.budget:
            raise busy(f"uploads in progress hold {guard.buffered:,} bytes (--max-connections x --max-body-mb)")
        guard.buffered += size
        self.bytes += size
        if not more:  # the whole upload is here: from now on the request holds a place inside
            if guard.inside >= guard.config.max_connections:
                raise guard.too_many()
            self.receiving = False
            guard.inside += 1

    def leave(self) -> None:
        self.guard.buffered -= self.bytes
        if not self.receiving:
            self.guard.inside -= 1


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def json_errors(app):
    """An ASGI layer that answers any exception of the routes with one line of JSON and logs one line, no traceback.

    A ``FloraEdgeError`` says what is wrong in its message (its ``status`` when it has one, else 500);
    anything else is a bug of ours or the runtime's: its type and message, status 500.
    """

    async def wrapped(scope, receive, send):
        started = False

        async def watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, watch)
        except Exception as exc:
            status = getattr(exc, "status", 500) if isinstance(exc, FloraEdgeError) else 500
            status = status if isinstance(status, int) and 400 <= status <= 599 else 500
            text = one_line(str(exc) or "no message")
            message = text if isinstance(exc, FloraEdgeError) else f"internal error ({type(exc).__name__}): {text}"
            LOG.error("%s %s -> %d: %s", scope.get("method"), scope.get("path"), status, message)
            if not started:  # else the answer is under way: the connection just ends
                await send_json_error(send, status, message)

    return wrapped


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": exc.detail, "status": exc.status_code}, exc.status_code, headers=exc.headers)


def create_app(config: ServeConfig) -> Starlette:
    """The web page and the JSON API for the model ``config`` names."""
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.pool.shutdown(wait=False)

    app = Starlette(
        routes=service.routes(),
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(Guard, service=service), Middleware(json_errors)],
        lifespan=lifespan,
    )
    app.state.gate = service.gate
    return app
