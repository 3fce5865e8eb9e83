"""``floraedge prepare --download``: fetch the raw Oxford 102 Flowers release files from its home page.

Every file is streamed into ``<name>.part`` (with a progress bar on a terminal, plain lines in a log), resumed with an HTTP ``Range``
request when a ``.part`` is already there, checked against its known md5 and only then renamed to
``<name>``.  A machine without internet fails fast (a short connect timeout) with a
:class:`DownloadError` that names the offline route: ``--source DIR``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from edge_runtime import console
from edge_runtime.errors import FloraEdgeError

log = logging.getLogger(__name__)

BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"

RELEASE_MD5: dict[str, str] = {
    "102flowers.tgz": "52808999861908f626f3c1f4e79d11fa",
    "imagelabels.mat": "e0620be6f572b9609742df49c70aed4d",
    "setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c",
}

OFFLINE_HINT = (
    "Without internet access, copy the Oxford 102 Flowers release files "
    "(102flowers.tgz or its extracted jpg/ folder, imagelabels.mat and setid.mat) into a folder "
    "and run `floraedge prepare --source DIR`, DIR being that folder holding the release files, "
    "instead of --download."
)

USER_AGENT = "floraedge-prepare (python urllib)"
_CHUNK = 1 << 16
# The largest release file (102flowers.tgz) is 0.33 GB: a server (or --mirror) sending more, or declaring
# more, is refused before it can fill the disk.
MAX_DOWNLOAD_BYTES = 2 * 1024**3

# Network failures: no route, DNS, refused, reset, timed out, TLS, a broken HTTP reply.
_NETWORK_ERRORS = (
    urllib.error.URLError,
    TimeoutError,  # socket.timeout is an alias of TimeoutError
    ConnectionError,
    http.client.HTTPException,
    ssl.SSLError,
)


class DownloadError(FloraEdgeError):
    """A release file could not be downloaded or verified; the message says why and what to do."""


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """The hex md5 of the file at ``path``, read ``chunk`` bytes at a time."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    """Where ``dest`` is written while it downloads: ``<name>.part`` beside it."""
    return dest.with_name(dest.name + ".part")


def bad_path(dest: Path) -> Path:
    """Where a file that failed its md5 check is moved: ``<name>.bad`` beside it."""
    return dest.with_name(dest.name + ".bad")


def _network_error(url: str, exc: BaseException) -> DownloadError:
    """A DownloadError for a failed connection, naming the offline route."""
    reason = getattr(exc, "reason", None) or exc
    return DownloadError(f"Could not download {url}: {type(exc).__name__}: {reason}. {OFFLINE_HINT}")


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """Open ``url``, asking for the bytes from ``offset`` on when it is not 0.

    Returns None when the server answers 416 (the range starts at or past the end of the file);
    raises DownloadError for any other HTTP error status and for every network failure.
    """
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310 - http(s) URLs only
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) URLs only
    except urllib.error.HTTPError as exc:  # before URLError: HTTPError is a URLError
        exc.close()
        if exc.code == 416 and offset:
            return None
        raise DownloadError(
            f"Could not download {url}: the server answered HTTP {exc.code} {exc.reason}. "
            f"Check the URL (the release may have moved); or: {OFFLINE_HINT}"
        ) from exc
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, exc) from exc


def _resume_start(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """The byte offset the response body starts at: ``offset`` for a matching 206, 0 for a 200.

    None when the server sent a 206 for some other range, so the partial file cannot be continued.
    """
    if resp.status != 206:
        return 0
    m = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return offset if m and int(m.group(1)) == offset else None


def _total_size(resp: http.client.HTTPResponse, start: int) -> int | None:
    """The full size of the file, from Content-Range or Content-Length; None when unknown."""
    m = re.match(r"\s*bytes\s+\d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _stream(resp: http.client.HTTPResponse, url: str, part: Path, start: int, progress: bool) -> None:
    """Write the response body into ``part`` from byte ``start`` on (0: truncate), with a progress bar."""
    total = _total_size(resp, start)
    if total is not None and total > MAX_DOWNLOAD_BYTES:
        raise DownloadError(
            f"{url} declares {total:,} bytes, over the {MAX_DOWNLOAD_BYTES:,}-byte limit of a release file; "
            "is --mirror serving the Oxford-102 release?"
        )
    written = start
    name = part.name.removesuffix(".part")
    with (
        open(part, "ab" if start else "wb") as f,
        console.counter(
            desc=name, total=total, initial=start, unit="B", enabled=progress, unit_scale=True, unit_divisor=1024
        ) as bar,
    ):
        try:
            while block := resp.read(_CHUNK):
                f.write(block)
                written += len(block)
                if written > MAX_DOWNLOAD_BYTES:
                    raise DownloadError(
                        f"{url} sent over {MAX_DOWNLOAD_BYTES:,} bytes, the limit of a release file; the download "
                        f"was stopped (the partial file is {part}: delete it). Is --mirror serving the release?"
                    )
                bar.update(len(block))
        except _NETWORK_ERRORS as exc:
            raise DownloadError(
                f"The download of {url} broke off after {written} bytes ({type(exc).__name__}: {exc}). "
                f"The partial file {part} is kept: re-run to resume it. {OFFLINE_HINT}"
            ) from exc
    if total is not None and written != total:
        raise DownloadError(
            f"The download of {url} stopped at {written} of {total} bytes. "
            f"The partial file {part} is kept: re-run to resume it (or delete it to start over)."
        )


def _finish(part: Path, dest: Path, url: str, expected_md5: str | None) -> Path:
    """Check the md5 of the finished ``part`` and rename it to ``dest``; a mismatch moves it to ``.bad``."""
    if expected_md5 is not None:
        got = md5sum(part)
        if got != expected_md5.lower():
            bad = bad_path(dest)
            os.replace(part, bad)
            raise DownloadError(
                f"{dest.name} downloaded from {url} is corrupt: md5 {got}, expected {expected_md5}. "
                f"The bad file was moved to {bad}; delete it and re-run to download again."
            )
    os.replace(part, dest)
    return dest


def already_there(dest: Path, expected_md5: str | None) -> bool:
    """True when ``dest`` exists and its md5 matches (or none is given); a mismatching one is moved to ``.bad``."""
    if not dest.exists():
        return False
    if expected_md5 is None:
        log.info("%s already present; kept (no md5 to check)", dest)
        return True
    got = md5sum(dest)
    if got == expected_md5.lower():
        log.info("%s already present, md5 ok", dest)
        return True
    log.warning("%s has md5 %s, expected %s: moved to %s, downloading again", dest, got, expected_md5, bad_path(dest))
    os.replace(dest, bad_path(dest))
    return False


def download_file(
    url: str,
    dest: Path,
    *,
    expected_md5: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    - ``dest`` already present: kept (no request) when its md5 matches ``expected_md5`` or no md5 is
      given; otherwise it is moved to ``<name>.bad`` and downloaded again.
    - The body goes to ``<name>.part``; an existing ``.part`` is resumed with ``Range: bytes=N-``.
      A server that ignores the range (200 instead of 206) makes the download restart from zero.
    - When done, the md5 is checked and ``.part`` is renamed to ``dest`` (``os.replace``), so ``dest``
      only ever holds a complete, verified file.
    - ``timeout`` (seconds) bounds the connect and every read; no network raises DownloadError fast.
    """
    dest = Path(dest)
    if already_there(dest, expected_md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    for _attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        resp = _request(url, offset, timeout)
        if resp is None:  # 416: the .part already reaches (or passes) the end of the file
            if expected_md5 is not None and md5sum(part) == expected_md5.lower():
                return _finish(part, dest, url, expected_md5)
            log.warning("%s cannot be resumed (HTTP 416); starting over", part)
            part.unlink()
            continue
        with resp:
            start = _resume_start(resp, offset)
            if start is None:
                log.warning("server answered a different range than asked for; restarting %s", dest.name)
                part.unlink()
                continue
            if offset and not start:
                log.info("server ignored the Range request; restarting %s from zero", dest.name)
            _stream(resp, url, part, start, progress)
        return _finish(part, dest, url, expected_md5)
    raise DownloadError(
        f"Could not resume {url} into {part}: the server refused the range twice. "
        f"Delete {part} and re-run; or: {OFFLINE_HINT}"
    )


def download_release(
    dest_dir: str | Path,
    *,
    base_url: str = BASE_URL,
    files: dict[str, str] = RELEASE_MD5,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download every release file (``name -> md5``) from ``base_url`` into ``dest_dir``; returns it.

    Files already present with the right md5 are skipped; partial ones are resumed.  The folder can
    then be given to ``floraedge prepare --source DIR``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    for name, md5 in files.items():
        download_file(base + name, dest_dir / name, expected_md5=md5, timeout=timeout, progress=progress)
    return dest_dir
