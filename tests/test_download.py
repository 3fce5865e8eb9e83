"""prepare.download against a real HTTP server on 127.0.0.1 (no internet): resume, md5, errors, offline."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_runtime.errors import FloraEdgeError
from prepare.download import (
    DownloadError,
    download_file,
    download_release,
    md5sum,
)

BIG = os.urandom(300 * 1024 + 123)
SMALL = {"a.mat": os.urandom(1000), "b.mat": b"setid"}


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class Fixture:
    """A running loopback server: its files, switches, and a log of (path, Range header) per request."""

    base_url: str
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    ignore_range: bool = False
    truncate_at: int | None = None  # send the full Content-Length but only this many bytes

    def url(self, name: str) -> str:
        return self.base_url + name


def _handler(fx: Fixture) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output quiet
            pass

        def do_GET(self) -> None:  # the http.server API name
            rng = self.headers.get("Range")
            fx.requests.append((self.path, rng))
            data = fx.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if rng and not fx.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fx.truncate_at is not None:
                body = body[: fx.truncate_at]
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[Fixture]:
    fx = Fixture(base_url="", files={"big.bin": BIG, **SMALL})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fx))
    httpd.daemon_threads = True
    fx.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fx
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)


def test_full_download_md5_ok(server: Fixture, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    out = download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=False)
    assert out == dest
    assert dest.read_bytes() == BIG
    assert md5sum(dest) == md5(BIG)
    assert not (tmp_path / "big.bin.part").exists()
    assert server.requests == [("/big.bin", None)]


def test_resume_sends_range_and_is_byte_identical(server: Fixture, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    half = len(BIG) // 2
    (tmp_path / "big.bin.part").write_bytes(BIG[:half])
    download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=True)
    assert server.requests == [("/big.bin", f"bytes={half}-")]
    assert dest.read_bytes() == BIG
    assert not (tmp_path / "big.bin.part").exists()


def test_server_ignoring_range_restarts_from_zero(server: Fixture, tmp_path: Path) -> None:
    server.ignore_range = True
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(BIG[:1000])
    download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=False)
    assert server.requests == [("/big.bin", "bytes=1000-")]
    assert dest.read_bytes() == BIG


def test_complete_part_with_416_is_finished(server: Fixture, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(BIG)
    download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=False)
    assert server.requests == [("/big.bin", f"bytes={len(BIG)}-")]
    assert dest.read_bytes() == BIG


def test_broken_transfer_keeps_part_and_rerun_resumes(server: Fixture, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    server.truncate_at = 100_000
    with pytest.raises(DownloadError, match="re-run to resume"):
        download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=False)
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").read_bytes() == BIG[:100_000]
    server.truncate_at = None
    download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=False)
    assert server.requests[-1] == ("/big.bin", "bytes=100000-")
    assert dest.read_bytes() == BIG


def test_md5_mismatch_raises_and_leaves_no_complete_looking_file(server: Fixture, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    wrong = "0" * 32
    with pytest.raises(DownloadError) as info:
        download_file(server.url("big.bin"), dest, expected_md5=wrong, progress=False)
    msg = str(info.value)
    assert "big.bin" in msg and wrong in msg and md5(BIG) in msg and "re-run" in msg
    assert isinstance(info.value, FloraEdgeError)
    assert not dest.exists()
    assert not (tmp_path / "big.bin.part").exists()
    assert (tmp_path / "big.bin.bad").read_bytes() == BIG


def test_404_names_status_and_url(server: Fixture, tmp_path: Path) -> None:
    url = server.url("missing.tgz")
    with pytest.raises(DownloadError, match="404") as info:
        download_file(url, tmp_path / "missing.tgz", progress=False)
    assert url in str(info.value)
    assert not (tmp_path / "missing.tgz").exists()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_fast_naming_source(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_release(tmp_path / "raw", base_url=f"http://127.0.0.1:{_closed_port()}/", progress=False)
    assert time.monotonic() - t0 < 2.0
    msg = str(info.value)
    assert "--source" in msg and "102flowers.tgz" in msg and "imagelabels.mat" in msg and "setid.mat" in msg


def test_unresponsive_server_times_out(tmp_path: Path) -> None:
    # Accepts connections (kernel backlog) but never answers: the read timeout must fire.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.mat"
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match="--source"):
            download_file(url, tmp_path / "x.mat", timeout=0.3, progress=False)
        assert time.monotonic() - t0 < 2.0


def test_present_file_with_right_md5_is_not_downloaded(server: Fixture, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    dest.write_bytes(BIG)
    download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=False)
    assert server.requests == []


def test_present_file_with_wrong_md5_is_replaced(server: Fixture, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    dest.write_bytes(b"junk")
    download_file(server.url("big.bin"), dest, expected_md5=md5(BIG), progress=False)
    assert dest.read_bytes() == BIG
    assert (tmp_path / "big.bin.bad").read_bytes() == b"junk"


def test_download_release_fetches_every_file(server: Fixture, tmp_path: Path) -> None:
    files = {name: md5(data) for name, data in SMALL.items()}
    base = server.base_url.rstrip("/")  # a base URL without the trailing slash works too
    out = download_release(tmp_path / "raw", base_url=base, files=files, progress=False)
    assert out == tmp_path / "raw"
    for name, data in SMALL.items():
        assert (out / name).read_bytes() == data
    assert sorted(p for p, _ in server.requests) == ["/a.mat", "/b.mat"]
    download_release(out, base_url=server.base_url, files=files, progress=False)  # all present: no requests
    assert len(server.requests) == 2


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "streamed-without-length"])
def test_a_file_over_the_size_limit_is_refused(server: Fixture, tmp_path: Path, monkeypatch, declared) -> None:
    import prepare.download as download

    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 100_000)
    if not declared:  # a server that never says how much it will send
        monkeypatch.setattr(download, "_total_size", lambda resp, start: None)
    with pytest.raises(DownloadError, match="declares 307,323 bytes" if declared else "sent over 100,000 bytes"):
        download_file(server.url("big.bin"), tmp_path / "big.bin", expected_md5=md5(BIG), progress=False)
    assert not (tmp_path / "big.bin").exists()
    part = tmp_path / "big.bin.part"
    assert not part.exists() or part.stat().st_size <= 100_000 + 65_536  # stopped within one chunk
