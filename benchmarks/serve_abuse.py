"""`floraedge serve` under a slow-body attack: does a legitimate client still get answered, and how fast?

N attacker connections each declare a large body and trickle it a byte at a time (reconnecting
whenever the server cuts them off), while one legitimate client posts a real JPEG at a steady
rate. Reports the legitimate client's success rate and p50/p99 latency, idle and under attack.

    python -m benchmarks.serve_abuse --model exports/lite0/model_int8.onnx [--image rose.jpg] [--slow 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(model: Path, *flags: str, log: Path):
    """``floraedge serve`` in its own process (so the CLI's uvicorn limits apply); yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "floraedge", "serve", "--model", str(model), "--port", str(port), *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/healthz", timeout=1).read()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class SlowBodies:
    """``n`` connections that declare a body and send it one byte every ``interval`` seconds, forever."""

    HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n"

    def __init__(self, port: int, n: int, interval: float = 0.5):
        self.port, self.interval, self.stopped = port, interval, threading.Event()
        self.sockets = [self._connect() for _ in range(n)]
        self.reconnects = 0
        self.thread = threading.Thread(target=self._run, name="slow-bodies", daemon=True)
        self.thread.start()

    def _connect(self) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.sendall(self.HEAD)
            return s
        except OSError:
            return None

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            for i, s in enumerate(self.sockets):
                try:
                    s.sendall(b"\xff")
                except (OSError, AttributeError):  # cut off (408) or never connected: come back
                    with contextlib.suppress(OSError, AttributeError):
                        s.close()
                    self.sockets[i] = self._connect()
                    self.reconnects += 1

    def stop(self) -> None:
        """Stop and drop every connection mid-body (an abrupt client disconnect)."""
        self.stopped.set()
        self.thread.join(timeout=5)
        for s in self.sockets:
            with contextlib.suppress(OSError, AttributeError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.close()


def legitimate_client(base: str, body: bytes, requests: int, interval: float) -> list[tuple[bool, float]]:
    """(answered 200, milliseconds) for ``requests`` posts, one every ``interval`` seconds."""
    results = []
    for _ in range(requests):
        start = time.perf_counter()
        request = urllib.request.Request(base + "/v1/classify", data=body, headers={"content-type": "image/jpeg"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                ok = response.status == 200 and "top" in json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            ok = False
        elapsed = time.perf_counter() - start
        results.append((ok, elapsed * 1e3))
        time.sleep(max(0.0, interval - elapsed))
    return results


def summarize(results: list[tuple[bool, float]]) -> dict:
    times = [ms for ok, ms in results if ok]
    return {
        "requests": len(results),
        "success_rate": round(sum(ok for ok, _ in results) / len(results), 4),
        "p50_ms": round(float(np.percentile(times, 50)), 2) if times else None,
        "p99_ms": round(float(np.percentile(times, 99)), 2) if times else None,
    }


def sample_jpeg(size=(480, 640)) -> bytes:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (*size, 3), dtype=np.uint8), (9, 9), 0)
    return cv2.imencode(".jpg", image)[1].tobytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", type=Path, default=None, help="default: a synthetic 640x480 JPEG")
    p.add_argument("--slow", type=int, default=50, help="attacker connections (default: %(default)s)")
    p.add_argument("--requests", type=int, default=200, help="legitimate requests per phase (default: %(default)s)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between them (default: %(default)s)")
    p.add_argument(
        "--body-timeout", type=float, default=10.0, help="the server's --body-timeout (default: %(default)s)"
    )
    args = p.parse_args(argv)
    body = args.image.read_bytes() if args.image else sample_jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        with serve_process(args.model, "--body-timeout", str(args.body_timeout), log=log) as (base, _):
            legitimate_client(base, body, 20, 0.0)  # warm-up
            idle = summarize(legitimate_client(base, body, args.requests, args.interval))
            attack = SlowBodies(int(base.rsplit(":", 1)[1]), args.slow)
            time.sleep(1.0)
            attacked = summarize(legitimate_client(base, body, args.requests, args.interval))
            attack.stop()
            time.sleep(0.5)
        text = log.read_text()
    result = {
        "slow_connections": args.slow,
        "body_timeout_s": args.body_timeout,
        "attacker_reconnects": attack.reconnects,
        "idle": idle,
        "under_attack": attacked,
        "p99_ratio": round(attacked["p99_ms"] / idle["p99_ms"], 2) if attacked["p99_ms"] and idle["p99_ms"] else None,
        "server_tracebacks": text.count("Traceback"),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
