"""The threat model for `floraedge serve` facing a network (torch-free).

1. Slow bodies: connections that declare a body and trickle it must not hold the inference slots;
   a legitimate client keeps getting answers (>= 99%), and dropped connections log no tracebacks.
2. Bombs in every image format and 1 x N images: answered 413 before decoding; the server goes on.
3. Bursts beyond the queue: 503 with Retry-After, never unbounded memory (tests/test_serve.py).
4. Flags reach the server: every serving flag of `floraedge serve` lands in its config.
(The latency under attack, p99 vs idle, is measured by `python -m benchmarks.serve_abuse`.)
"""

from __future__ import annotations

import socket
import time

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

from benchmarks.serve_abuse import SlowBodies, legitimate_client, sample_jpeg, serve_process, summarize
from edge_runtime.options import config_from_args
from edge_runtime.serve.app import ServeConfig, create_app
from floraedge import build_parser
from tests.test_adversarial import BOMB_FORMATS, BOMB_SIZE, bomb
from tests.tiny_models import tiny_onnx

LOCAL = "http://localhost"  # a Host the server answers to (a foreign name gets 400: DNS rebinding)


@pytest.fixture
def model(tmp_path):
    return tiny_onnx(tmp_path / "model_fp32.onnx")


@pytest.mark.slow
def test_slow_bodies_do_not_starve_real_users_and_leave_no_tracebacks(model, tmp_path):
    log = tmp_path / "serve.log"
    with serve_process(model, "--body-timeout", "2", "--workers", "1", "--queue", "4", log=log) as (base, proc):
        attack = SlowBodies(int(base.rsplit(":", 1)[1]), 50, interval=0.3)
        time.sleep(0.5)  # every attacker is inside, mid-body: more than workers + queue
        results = summarize(legitimate_client(base, sample_jpeg((120, 160)), 100, 0.04))
        reconnects = attack.reconnects
        attack.stop()  # 50 connections dropped mid-body
        time.sleep(1.0)
        assert proc.poll() is None
    text = log.read_text()
    assert results["success_rate"] >= 0.99, results
    assert reconnects >= 50  # the body deadline cut every attacker off at least once (408)
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]


def test_a_client_that_never_finishes_its_body_gets_408_and_is_closed(model, tmp_path):
    with serve_process(model, "--body-timeout", "1", log=tmp_path / "serve.log") as (base, _):
        s = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10)
        s.sendall(SlowBodies.HEAD + b"\xff\xd8")  # declares 1 MB, sends 2 bytes
        start, answer = time.monotonic(), b""
        while chunk := s.recv(4096):  # until the server closes the connection
            answer += chunk
        s.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
    assert time.monotonic() - start < 20  # cut off by the 1 s deadline, not by the 30 s default or never


@pytest.fixture
def client(model):
    with TestClient(create_app(ServeConfig(model=model, max_pixels=1_000_000)), base_url=LOCAL) as c:
        yield c


@pytest.mark.parametrize("fmt", BOMB_FORMATS)
def test_a_bomb_in_any_format_is_413_and_the_server_goes_on(client, fmt):
    r = client.post("/v1/classify", content=bomb(fmt, BOMB_SIZE.get(fmt, 60_000), BOMB_SIZE.get(fmt, 60_000)))
    assert r.status_code == 413 and "pixels" in r.json()["error"] or "side" in r.json()["error"]
    ok = client.post("/v1/classify", content=sample_jpeg((60, 80)), headers={"content-type": "image/jpeg"})
    assert ok.status_code == 200


@pytest.mark.parametrize("w, h", [(1, 5000), (5000, 1), (3, 1000)])
def test_a_1xN_image_is_413_not_gigabytes(client, w, h):
    data = cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))[1].tobytes()  # a real, tiny, valid PNG
    r = client.post("/v1/classify", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "aspect ratio" in r.json()["error"]


def test_an_abrupt_disconnect_mid_body_is_not_a_server_error(model, tmp_path):
    log = tmp_path / "serve.log"
    with serve_process(model, log=log) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(SlowBodies.HEAD + b"\xff\xd8")
            s.close()
        time.sleep(0.5)
        assert summarize(legitimate_client(base, sample_jpeg((60, 80)), 3, 0.0))["success_rate"] == 1.0
    assert "Traceback" not in log.read_text()


def test_every_serving_flag_reaches_the_server_config(tmp_path):
    args = build_parser().parse_args(
        ["serve", "--model", "m.onnx", "--camera", str(tmp_path), "--token", "t", "--max-body-mb", "2",
         "--max-pixels", "1000", "--workers", "3", "--queue", "7", "--threads", "2", "--body-timeout", "4.5"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.camera == tmp_path and config.token == "t" and config.max_body == 2 * 1024 * 1024
    assert (config.max_pixels, config.workers, config.queue, config.threads) == (1000, 3, 7, 2)
    assert config.body_timeout == 4.5
