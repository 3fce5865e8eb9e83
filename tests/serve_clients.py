"""Clients that load and attack a `floraedge serve` process over loopback: a legitimate client, connections
held idle or dribbling a request head, bodies trickled byte by byte. Used by tests/test_serve_abuse.py,
tests/test_signals.py and the study studies/serve_abuse.py (the latency under attack)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]  # the checkout: `floraedge serve` runs from it


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


class HeldConnections:
    """``n`` connections that never complete a request head: ``idle`` ones send nothing, ``slow-head`` ones
    send one byte of a head every ``interval`` seconds. One the server closes is reopened at once."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 4000 + b"\r\n\r\n"

    def __init__(self, port: int, n: int, *, slow: bool, interval: float = 1.0):
        self.port, self.slow, self.interval, self.stopped = port, slow, interval, threading.Event()
        self.closed_by_server, self.first_close_s, self.started = 0, None, time.monotonic()
        self.sockets = [self._connect() for _ in range(n)]
        self.sent = [0] * n
        self.thread = threading.Thread(target=self._run, name="held-connections", daemon=True)
        self.thread.start()

    def _connect(self) -> socket.socket | None:
        with contextlib.suppress(OSError):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.setblocking(False)  # the checks below must not wait
            return s
        return None

    @staticmethod
    def _closed(s: socket.socket | None) -> bool:
        """Whether the server closed ``s`` (end of stream, a reset, or an answer before the head was done)."""
        if s is None:
            return True
        try:
            s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            for i, s in enumerate(self.sockets):
                if self._closed(s):
                    if s is not None:
                        self.closed_by_server += 1
                        self.first_close_s = self.first_close_s or round(time.monotonic() - self.started, 2)
                        s.close()
                    self.sockets[i], self.sent[i] = self._connect(), 0
                elif self.slow and self.sent[i] < len(self.HEAD) - 1:  # never the last byte: the head never ends
                    with contextlib.suppress(OSError):
                        self.sent[i] += s.send(self.HEAD[self.sent[i] : self.sent[i] + 1])

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)
        for s in self.sockets:
            with contextlib.suppress(OSError, AttributeError):
                s.close()


class SlowBodies:
    """``n`` connections that declare a body and send it one byte every ``interval`` seconds, forever."""

    HEAD = (
        b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n"
    )

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


def raise_open_files_limit(needed: int) -> None:
    """Lift this process's soft limit on open files to ``needed`` (within the hard limit): one per attacker."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
