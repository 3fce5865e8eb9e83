"""`floraedge serve`: the API with real images and a tiny exported model, every bad input, the queue limit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import cv2
import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from edge_runtime.admission import ImageRejected, admit
from edge_runtime.errors import FloraEdgeError
from edge_runtime.serve.app import ServeConfig, create_app
from floraedge import main as cli_main
from tests.tiny_models import tiny_onnx

LOCAL = "http://localhost"  # a Host the server answers to (a foreign name gets 400: DNS rebinding)


@pytest.fixture
def model(tmp_path):
    return tiny_onnx(tmp_path / "model_fp32.onnx")


@pytest.fixture
def client(model):
    with TestClient(create_app(ServeConfig(model=model, max_body=200_000, max_pixels=1_000_000)), base_url=LOCAL) as c:
        yield c


@pytest.fixture
def jpeg() -> bytes:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (7, 7), 0)
    return cv2.imencode(".jpg", image)[1].tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb's signature), with valid chunk CRCs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def check_top(result: dict, k: int = 4) -> None:
    assert len(result["top"]) == k
    assert all(set(t) == {"index", "label", "score"} for t in result["top"])
    scores = [t["score"] for t in result["top"]]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-3  # all 4 classes
    assert result["model_ms"] > 0 and result["total_ms"] >= result["model_ms"]


def test_health_model_and_page(client, model):
    assert client.get("/healthz").json() == {"status": "ok", "model": "model_fp32.onnx"}
    m = client.get("/v1/model").json()
    assert m["labels"] == ["flower 0", "flower 1", "flower 2", "flower 3"] and m["format"] == "onnx"
    assert m["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest() and m["spec"]["crop_size"] == 32
    page = client.get("/")
    assert page.status_code == 200 and "/v1/classify" in page.text and "http" not in page.text.split("<script>")[1]


def test_classify_multipart_and_raw_bytes_agree(client, jpeg):
    multipart = client.post("/v1/classify", files={"file": ("rose.jpg", jpeg, "image/jpeg")})
    raw = client.post("/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"})
    assert multipart.status_code == raw.status_code == 200
    check_top(multipart.json())
    assert multipart.json()["top"] == raw.json()["top"]
    assert (multipart.json()["width"], multipart.json()["height"]) == (160, 120)


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        (dict(content=b"x" * 300_000, headers={"content-type": "image/jpeg"}), 413, "byte limit"),
        (dict(content=png_claiming(20000, 20000), headers={"content-type": "image/png"}), 413, "pixels"),
        (
            dict(content=b"plain text, not an image", headers={"content-type": "image/jpeg"}),
            415,
            "not an image format",
        ),
        (dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "empty body"),
        (dict(files={"other": ("a.jpg", b"x", "image/jpeg")}), 400, "field named 'file'"),
    ],
    ids=["body-too-large", "decompression-bomb", "not-an-image", "empty", "no-file-field"],
)
def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(client, jpeg, kwargs, status, message):
    r = client.post("/v1/classify", **kwargs)
    assert r.status_code == status and message in r.json()["error"]
    assert client.post("/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"}).status_code == 200


def test_wrong_method_and_path_are_json_errors(client):
    assert client.get("/v1/classify").status_code == 405 and "error" in client.get("/v1/classify").json()
    assert client.get("/nope").status_code == 404 and client.get("/nope").json()["status"] == 404


def test_full_queue_answers_503_with_retry_after(model, jpeg):
    """Many requests at once with room for one: those that find the slot taken get 503 + Retry-After,
    the one inside still gets its answer, and the server answers again once it is free."""
    app = create_app(ServeConfig(model=model, workers=1, queue=0))
    headers = {"content-type": "image/jpeg"}

    async def scenario() -> tuple[list, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            burst = [client.post("/v1/classify", content=jpeg, headers=headers) for _ in range(16)]
            answers = await asyncio.gather(*burst)
            after = await client.post("/v1/classify", content=jpeg, headers=headers)
        return [(r.status_code, r.headers.get("retry-after")) for r in answers], after.status_code

    answers, after = asyncio.run(scenario())
    assert (200, None) in answers and (503, "1") in answers, answers
    assert set(answers) <= {(200, None), (503, "1")} and after == 200


def test_bearer_token(model, jpeg):
    with TestClient(create_app(ServeConfig(model=model, token="s3cret")), base_url=LOCAL) as c:
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness stays open


def test_openapi_matches_the_routes(model, tmp_path):
    camera = tmp_path / "camera"
    camera.mkdir()
    (camera / "latest.json").write_text("{}")
    with TestClient(create_app(ServeConfig(model=model, camera=camera)), base_url=LOCAL) as client:
        spec = client.get("/openapi.json").json()
        for path, methods in spec["paths"].items():
            for method in methods:
                if path == "/camera.mjpg":  # an endless stream: checked below without HTTP
                    continue
                r = client.request(method.upper(), path)
                assert r.status_code not in (404, 405), (method, path)
    assert set(spec["paths"]["/v1/classify"]["post"]["responses"]) >= {"200", "400", "413", "415", "503"}


def test_admission_reads_png_and_jpeg_headers(jpeg):
    assert admit(jpeg) == (160, 120)
    assert admit(png_claiming(7, 9)) == (7, 9)
    with pytest.raises(ImageRejected, match="truncated or malformed"):
        admit(b"GIF89a")


def test_space_bundle_runs_as_is(model, tmp_path, jpeg):
    out = tmp_path / "space"
    assert cli_main(["space", "--model", str(model), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "app.py",
        "requirements.txt",
        "model_fp32.onnx",
        "labels.txt",
        "README.md",
    }
    requirements = (out / "requirements.txt").read_text()
    assert "torch" not in requirements and "onnxruntime" in requirements.split()  # BACKENDS' package for .onnx
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from starlette.testclient import TestClient; import app\n"
        "c = TestClient(app.app); print(c.get('/healthz').json()['status'])"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=out)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
    assert cli_main(["space", "--model", str(model), "--out", str(out)]) == 1  # exists: refused


def test_camera_shows_what_floraedge_run_publishes(model, tmp_path):
    import asyncio

    from edge_runtime.backends import load
    from edge_runtime.classify import Classifier
    from edge_runtime.live import LiveConfig, run_live
    from edge_runtime.serve.app import mjpeg_frames

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), np.full((40, 40, 3), 80 * i, np.uint8))
    camera = tmp_path / "camera"
    run_live(
        Classifier(load(model)), LiveConfig(source=str(frames), headless=True, publish=camera), emit=lambda _: None
    )
    with TestClient(create_app(ServeConfig(model=model, camera=camera)), base_url=LOCAL) as c:
        latest = c.get("/v1/camera").json()
        assert (
            1 <= latest["frame"] <= 3 and latest["label"]
        )  # which frame depends on the 10/s publish limit in ("unsure", "flower 0", "flower 1", "flower 2", "flower 3")
        assert c.get("/v1/model").json()["camera"] is True

    async def first_part():
        return await anext(mjpeg_frames(camera))

    part = asyncio.run(first_part())
    assert part.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in part
    with TestClient(create_app(ServeConfig(model=model)), base_url=LOCAL) as c:
        assert c.get("/v1/camera").status_code == 404 and "--camera" in c.get("/camera.mjpg").json()["error"]


def test_decoding_runs_off_the_event_loop_and_large_jpegs_report_their_full_size(model, monkeypatch):
    from edge_runtime.serve import app as app_module

    threads = []
    real = app_module.decode_upload

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "decode_upload", spy)
    big = cv2.imencode(".jpg", cv2.resize(np.arange(48, dtype=np.uint8).reshape(6, 8), (1600, 1200)))[1].tobytes()
    with TestClient(create_app(ServeConfig(model=model)), base_url=LOCAL) as c:
        r = c.post("/v1/classify", content=big, headers={"content-type": "image/jpeg"}).json()
    assert threads and all(name.startswith("decode-infer") for name in threads)
    assert (r["width"], r["height"]) == (1600, 1200)  # decoded at 1/8 (the model needs 36 px), reported as sent
    assert {"decode_ms", "preprocess_ms", "queue_ms", "model_ms", "total_ms"} <= set(r)


def test_the_server_keeps_connections_alive(model, jpeg):
    import http.client

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(model=model)), host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        sockets = []
        for _ in range(3):
            conn.request("POST", "/v1/classify", body=jpeg, headers={"content-type": "image/jpeg"})
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["top"]
            assert response.getheader("connection", "").lower() != "close"
            sockets.append(conn.sock)
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3  # one TCP connection for all three
        conn.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize(
    "host, status",
    [
        ("localhost:8000", 200),
        ("127.0.0.1:8000", 200),
        ("[::1]:8000", 200),
        ("192.168.1.20", 200),
        (f"{socket.gethostname()}.local:8000", 200),
        ("flowers.example:8000", 200),  # named in allowed_hosts
        ("attacker.example", 400),  # DNS rebinding: the attacker's name resolving to this device
        ("attacker.example:8000", 400),
        ("LOCALHOST.attacker.example", 400),
        ("127.0.0.1.attacker.example", 400),
    ],
)
def test_a_foreign_host_header_is_refused(model, host, status):
    config = ServeConfig(model=model, allowed_hosts=("Flowers.Example",))
    with TestClient(create_app(config), base_url=LOCAL) as c:
        r = c.get("/v1/model", headers={"host": host})
    assert r.status_code == status, r.text
    if status == 400:
        assert set(r.json()) == {"error", "status"} and "--allowed-hosts" in r.json()["error"]


def test_allowed_hosts_star_turns_the_check_off(model):
    with TestClient(create_app(ServeConfig(model=model, allowed_hosts=("*",))), base_url=LOCAL) as c:
        assert c.get("/healthz", headers={"host": "anything.example"}).status_code == 200


@pytest.mark.parametrize("token", ["", "pässwort", "two words", "tab\there", "new\nline"])
def test_a_token_no_client_could_send_is_refused(model, token):
    with pytest.raises(FloraEdgeError, match="--token"):
        ServeConfig(model=model, token=token)
    assert cli_main(["serve", "--model", str(model), "--token", token, "--port", "1"]) == 1  # before listening


def test_a_wrong_non_ascii_token_is_401_not_an_error(model):
    with TestClient(create_app(ServeConfig(model=model, token="abc-DEF_1.2~3+/=")), base_url=LOCAL) as c:
        assert c.get("/v1/model", headers={"authorization": "Bearer abc-DEF_1.2~3+/="}).status_code == 200
        r = c.get("/v1/model", headers={"authorization": "Bearer ÿÿ".encode("latin-1")})
        assert r.status_code == 401 and r.json()["status"] == 401


@pytest.mark.parametrize("content_type", ["MULTIPART/FORM-DATA", "Multipart/Form-Data"])
def test_content_type_is_compared_without_case(client, jpeg, content_type):
    files = {"file": ("rose.jpg", jpeg, "image/jpeg")}
    request = client.build_request("POST", "/v1/classify", files=files)
    boundary = request.headers["content-type"].split("boundary=")[1]
    headers = {"content-type": f"{content_type}; boundary={boundary}"}
    r = client.post("/v1/classify", content=request.read(), headers=headers)
    assert r.status_code == 200 and r.json()["top"]


class RuntimeFailure(FloraEdgeError):
    status = 503


@pytest.mark.parametrize(
    "error, status, says",
    [
        (RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION\n  Non-zero status code"), 500, "RuntimeError"),
        (MemoryError(), 500, "MemoryError"),
        (KeyError("output"), 500, "KeyError"),
        (FloraEdgeError("the model failed on this input\n(details)"), 500, "the model failed"),
        (RuntimeFailure("inference failed: the runtime is gone"), 503, "runtime is gone"),
    ],
    ids=["runtime-error", "memory-error", "key-error", "floraedge-error", "error-with-status"],
)
def test_any_exception_is_one_line_of_json_and_one_log_line(model, jpeg, monkeypatch, caplog, error, status, says):
    from edge_runtime.classify import Classifier

    def fail(*args, **kwargs):
        raise error

    with TestClient(create_app(ServeConfig(model=model)), base_url=LOCAL) as c:
        monkeypatch.setattr(Classifier, "predict_batch", fail)
        with caplog.at_level("ERROR", logger="uvicorn.error"):
            r = c.post("/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"})
        monkeypatch.undo()
        after = c.post("/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error", "status"} and says in r.json()["error"] and "\n" not in r.json()["error"]
    records = [rec for rec in caplog.records if rec.name == "uvicorn.error"]
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert after.status_code == 200  # the server goes on


@pytest.mark.parametrize(
    "content, status",
    [
        (b'{"label": "rose", "sc', 502),  # cut short
        (b"\xff\xfe\x00garbage", 502),
        (b"[1, 2, 3]", 502),
        (b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', 502),  # over the size read
        (None, 404),
        ("folder", 404),
    ],
    ids=["truncated", "binary", "not-an-object", "huge", "missing", "a-folder"],
)
def test_a_malformed_camera_result_is_a_json_error(model, tmp_path, content, status):
    camera = tmp_path / "camera"
    camera.mkdir()
    if content == "folder":
        (camera / "latest.json").mkdir()
    elif content is not None:
        (camera / "latest.json").write_bytes(content)
    with TestClient(create_app(ServeConfig(model=model, camera=camera)), base_url=LOCAL) as c:
        r = c.get("/v1/camera")
    assert r.status_code == status and set(r.json()) == {"error", "status"} and "\n" not in r.json()["error"]


def test_requests_in_progress_are_bounded_by_max_connections(model, jpeg):
    """Two requests held in progress with room for two: a third gets a JSON 503, then room comes back."""
    app = create_app(ServeConfig(model=model, max_connections=2))
    release = asyncio.Event()

    async def scenario():
        async def held_body():
            await release.wait()
            return {"type": "http.request", "body": b"", "more_body": False}

        async def nothing(message):
            pass

        scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": [(b"host", b"localhost")],
                 "query_string": b"", "root_path": "", "scheme": "http", "server": ("localhost", 80)}  # fmt: skip
        held = [asyncio.create_task(app(dict(scope), held_body, nothing)) for _ in range(2)]
        await asyncio.sleep(0.2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            busy = await client.get("/healthz")
            release.set()
            await asyncio.gather(*held)
            again = await client.get("/healthz")
        return busy, again

    async def run():
        async with app.router.lifespan_context(app):
            return await scenario()

    busy, again = asyncio.run(run())
    assert busy.status_code == 503 and "--max-connections" in busy.json()["error"]
    assert busy.headers["retry-after"] == "1" and again.status_code == 200


def test_camera_streams_are_bounded(model, tmp_path):
    """Each camera stream holds a request in progress for as long as it is watched: past the bound, a JSON 503."""
    from edge_runtime.serve.app import CAMERA_STREAMS

    camera = tmp_path / "camera"
    camera.mkdir()
    cv2.imwrite(str(camera / "latest.jpg"), np.zeros((8, 8, 3), np.uint8))
    app = create_app(ServeConfig(model=model, camera=camera))
    scope = {"type": "http", "method": "GET", "path": "/camera.mjpg", "headers": [(b"host", b"localhost")],
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("localhost", 80)}  # fmt: skip

    async def scenario():
        watching = asyncio.Event()  # the viewers never leave during the test
        parts: list[bytes] = []

        async def viewer_receive():
            await watching.wait()
            return {"type": "http.disconnect"}

        async def viewer_send(message):
            parts.append(message.get("body", b""))

        viewers = [asyncio.create_task(app(dict(scope), viewer_receive, viewer_send)) for _ in range(CAMERA_STREAMS)]
        await asyncio.sleep(0.5)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            refused = await client.get("/camera.mjpg")
        watching.set()
        await asyncio.wait_for(asyncio.gather(*viewers, return_exceptions=True), 10)
        return refused, parts

    async def run():
        async with app.router.lifespan_context(app):
            return await scenario()

    refused, parts = asyncio.run(run())
    assert sum(part.startswith(b"--frame") for part in parts) == CAMERA_STREAMS  # each viewer got its frame
    assert refused.status_code == 503 and "camera streams" in refused.json()["error"]


def test_uploads_in_progress_count_by_their_bytes_not_their_number(model):
    """With max_connections=2: five uploads that never finish do not keep a third request out; the bytes
    all uploads hold together are bounded by max_connections x max_body (a JSON 503 past it)."""
    app = create_app(ServeConfig(model=model, max_connections=2, max_body=1000))
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "query_string": b"", "root_path": "",
             "scheme": "http", "server": ("localhost", 80)}  # fmt: skip

    def upload() -> dict:
        return dict(scope, headers=[(b"host", b"localhost"), (b"content-length", b"1000")])

    async def scenario():
        stalled = asyncio.Event()
        answers: list[dict] = []

        def trickle(first: bytes):
            sent = False

            async def receive():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": first, "more_body": True}
                await stalled.wait()
                return {"type": "http.disconnect"}

            return receive

        async def record(message):
            if message["type"] == "http.response.start":
                answers.append(message)

        slow = [asyncio.create_task(app(upload(), trickle(b"\xff"), record)) for _ in range(5)]
        big = asyncio.create_task(app(upload(), trickle(b"x" * 999), record))  # 5 + 999 of 2000 bytes
        await asyncio.sleep(0.3)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            health = await client.get("/healthz")  # the slow uploads hold no place
            over = await client.post("/v1/classify", content=b"y" * 1000)  # 1004 + 1000 > 2000 bytes
        stalled.set()
        await asyncio.wait_for(asyncio.gather(*slow, big, return_exceptions=True), 10)
        return health, over

    async def run():
        async with app.router.lifespan_context(app):
            return await scenario()

    health, over = asyncio.run(run())
    assert health.status_code == 200
    assert over.status_code == 503 and "uploads in progress hold" in over.json()["error"], over.text


def test_requests_in_progress_must_leave_room_for_new_connections(model):
    assert cli_main(["serve", "--model", str(model), "--max-connections", "50", "--max-open-connections", "50"]) == 1


def test_an_oversized_camera_frame_is_skipped_not_sent(tmp_path, monkeypatch):
    from edge_runtime.serve import app as app_module

    camera = tmp_path / "camera"
    camera.mkdir()
    (camera / "latest.jpg").write_bytes(b"\xff\xd8" + b"x" * 100)
    monkeypatch.setattr(app_module, "MAX_CAMERA_FRAME", 50)

    async def first_part():
        stream = app_module.mjpeg_frames(camera, interval=0.01)
        try:
            return await asyncio.wait_for(anext(stream), 0.5)
        except asyncio.TimeoutError:
            return None

    assert asyncio.run(first_part()) is None  # no part, and no error: the stream waits for the next frame
    monkeypatch.setattr(app_module, "MAX_CAMERA_FRAME", 1000)
    (camera / "latest.jpg").write_bytes(b"\xff\xd8" + b"y" * 100)
    part = asyncio.run(first_part())
    assert part is not None and part.endswith(b"y" * 100 + b"\r\n")


@pytest.mark.parametrize(
    ("files", "shown"),
    [
        ({"model_fp32.onnx": {"bytes": 1, "sha256": "0" * 64}}, "see the model card"),  # a release's card
        ([{"file": "model_fp32.onnx", "accuracy": 0.5, "n": 4}], "0.5000 top-1 on 4 validation images"),  # an export's
        ({"model_fp32.onnx": {"accuracy": 0.25, "n": 8}}, "0.2500 top-1 on 8 validation images"),
        ("not a list", "see the model card"),
    ],
    ids=["release", "export", "release-with-accuracy", "malformed"],
)
def test_space_reads_either_shape_of_model_card(model, tmp_path, files, shown):
    """A release's card maps file names to entries, an export's lists them (the released model's card ended
    `space` in a traceback); a malformed card only loses the accuracy line."""
    (model.parent / "model_card.json").write_text(json.dumps({"files": files}))
    out = tmp_path / "space"
    assert cli_main(["space", "--model", str(model), "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert shown in readme and "GuardedH11Protocol" in readme  # the run line keeps serve's connection guard
    assert "GuardedH11Protocol" in (out / "app.py").read_text()
