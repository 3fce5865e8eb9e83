"""Frame sources for the live loop: camera index or device, video file, image folder, RTSP/HTTP URL, GStreamer.

A ``FramePipeline`` reads the source in a background thread and also decodes and preprocesses
each frame there, so the main thread only runs the model. Live sources keep only the newest
frame (OpenCV's own buffer would otherwise hand out stale frames) and are reopened with backoff
when they drop, a bounded number of times in a row, each attempt reported; files, folders and
finite videos over a URL lose no frame and end at their end. The kind of a source is decided once
(``resolve_source``), before anything opens; a GStreamer pipeline only when asked for by name.
Credentials in a URL never reach a message (``redact``).
"""

from __future__ import annotations

import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.admission import IMAGE_SUFFIXES
from edge_runtime.errors import FloraEdgeError
from edge_runtime.preprocess import read_image_or_none
from edge_runtime.spec import PreprocessSpec

STREAM_TIMEOUT_MS = 5000  # FFmpeg's open/read timeouts for URLs: a stalled stream fails and is reopened
SOURCE_KINDS = ("auto", "camera", "device", "file", "folder", "stream", "gstreamer")
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "hls")
MAX_RECONNECTS = 10  # reopen attempts in a row without a frame before a live source counts as lost
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# user:password@ in any URL (also inside a GStreamer pipeline's location=...), and secret-looking query values
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#]*@")
_SECRET_QUERY = re.compile(
    r"([?&;](?:pass(?:word|wd)?|pwd|token|key|secret|auth|sig(?:nature)?|user(?:name)?)=)[^&;#\s]*", re.I
)


class SourceError(FloraEdgeError):
    """A source that cannot be opened at all, or that was lost for good."""


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it (``user:pass@``, ``?password=``...) replaced by ``***``,
    so that no log line, error or summary repeats them."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


@dataclass(frozen=True)
class SourceKind:
    """What ``--source`` names, decided once before anything opens: the kind and the text to open."""

    kind: str  # one of SOURCE_KINDS but "auto"
    target: str

    @property
    def shown(self) -> str:
        """The source as logs and errors may show it: credentials redacted."""
        return redact(self.target)


def resolve_source(source: str, kind: str = "auto") -> SourceKind:
    """The kind of ``source``: ``kind`` when given (checked), else decided from its form. A GStreamer pipeline is
    never guessed (a file name may contain ``!``): it takes ``kind="gstreamer"``."""
    if kind not in SOURCE_KINDS:
        raise SourceError(f"source kind {kind!r} is not one of {', '.join(SOURCE_KINDS)}")
    resolved = SourceKind(guess_kind(source) if kind == "auto" else kind, source)
    check_kind(resolved)
    return resolved


def guess_kind(source: str) -> str:
    if source.isdigit():
        return "camera"
    if _URL.match(source):
        return "stream"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.exists() and stat.S_ISCHR(path.stat().st_mode):
        return "device"
    if not path.exists() and "!" in source and " " in source:
        raise SourceError(
            f"source {redact(source)!r} is no file; if it is a GStreamer pipeline, add --source-kind gstreamer"
        )
    return "file"


def check_kind(resolved: SourceKind) -> None:
    """Refuse a source that is not what its kind says, with the forms that kind takes."""
    kind, target, path = resolved.kind, resolved.target, Path(resolved.target)
    problem = None
    if kind == "camera" and not target.isdigit():
        problem = "is not a camera index (0, 1, ...)"
    elif kind == "stream":
        match = _URL.match(target)
        if not match or match.group(1).lower() not in URL_SCHEMES:
            problem = f"is not a stream URL ({', '.join(s + '://' for s in URL_SCHEMES)})"
    elif kind == "folder" and not path.is_dir():
        problem = "is not a folder"
    elif kind == "device" and not (path.exists() and stat.S_ISCHR(path.stat().st_mode)):
        problem = "is not a camera device (a character device such as /dev/video0)"
    elif kind == "file" and not path.is_file():
        problem = (
            "is not a regular file (a folder, FIFO, socket or device; a FIFO could block for ever)"
            if path.exists()
            else "is not a camera index, device, folder, file or URL (see floraedge run --help)"
        )
    if problem:
        raise SourceError(f"source {resolved.shown!r} {problem}")


class ImageFolderSource:
    """The images of a folder, in name order, as if they were frames of a video."""

    is_live = False

    def __init__(self, folder: Path, spec: PreprocessSpec | None = None):
        self.folder, self.identity = folder, _identity(folder)
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.index, self.spec = 0, spec

    def describe(self) -> str:
        return f"image folder {self.folder} ({len(self.paths)} images; ends after the last)"

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.index >= len(self.paths):
            return False, None
        path, self.index = self.paths[self.index], self.index + 1
        # the spec lets a large JPEG decode at reduced size; a FIFO or device is refused, not waited on
        image = read_image_or_none(path, self.spec)
        if image is None and _identity(self.folder) != self.identity:  # checked on a failure only: no stat per frame
            raise SourceError(
                f"the source folder {self.folder} disappeared (or was replaced) after {self.index - 1} of "
                f"{len(self.paths)} images"
            )
        return True, image  # None for a corrupt or refused file: skipped and counted

    def release(self) -> None:
        self.index = len(self.paths)


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        info = folder.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


class CaptureSource:
    """An OpenCV ``VideoCapture``; ``is_live`` for cameras and live streams, not for files or finite videos."""

    def __init__(self, capture, *, is_live: bool, description: str, expected: int = 0):
        self.capture, self.is_live, self.description = capture, is_live, description
        self.expected, self.delivered = expected, 0  # frames the container announced, and those read

    def describe(self) -> str:
        return self.description

    def shortfall(self) -> str | None:
        """Why a finite source ended early (a cut connection, a truncated file), or None."""
        if self.expected and self.delivered < self.expected:
            return f"ended after {self.delivered} of its {self.expected} frames (cut short?)"
        return None

    def read(self):
        ok, image = self.capture.read()
        self.delivered += bool(ok)
        return ok, image

    def release(self) -> None:
        self.capture.release()


def open_source(
    source: SourceKind | str,
    *,
    width: int | None = None,
    height: int | None = None,
    spec: PreprocessSpec | None = None,
):
    """Open ``source`` (a ``SourceKind``, or a string whose kind ``resolve_source`` decides)."""
    resolved = source if isinstance(source, SourceKind) else resolve_source(source)
    if resolved.kind == "folder":
        return ImageFolderSource(Path(resolved.target), spec)
    capture = open_capture(resolved)
    if width and height:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if not capture.isOpened():
        capture.release()
        hint = " (is this OpenCV built with GStreamer? see docs/devices.md)" if resolved.kind == "gstreamer" else ""
        raise SourceError(f"could not open {resolved.kind} source {resolved.shown!r}{hint}")
    live = is_live(resolved, capture)
    return CaptureSource(
        capture, is_live=live, description=describe(resolved, capture), expected=0 if live else frame_count(capture)
    )


def open_capture(resolved: SourceKind):
    target, kind = resolved.target, resolved.kind
    api = {"gstreamer": cv2.CAP_GSTREAMER, "stream": cv2.CAP_FFMPEG, "device": cv2.CAP_V4L2}.get(kind, cv2.CAP_ANY)
    if kind == "file":
        api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    params = (
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        if kind == "stream"
        else []
    )
    return cv2.VideoCapture(int(target) if kind == "camera" else target, api, params)


def frame_count(capture) -> int:
    """The frames a capture says it holds; 0 where it does not know (a camera, a live stream)."""
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if count == count and 0 < count < 2**31 else 0  # count == count: not NaN


def is_live(resolved: SourceKind, capture) -> bool:
    """Cameras, devices and pipelines are live; a URL is live unless it knows its length (a finite video over
    HTTP ends at its end, like a file); a file never is."""
    if resolved.kind == "stream":
        return frame_count(capture) == 0
    return resolved.kind != "file"


def describe(resolved: SourceKind, capture) -> str:
    """One line that says what the source is and how it ends."""
    frames = frame_count(capture)
    return {
        "camera": f"camera {resolved.target} (live)",
        "device": f"camera device {resolved.target} (live)",
        "file": f"video file {resolved.target} ({frames or 'unknown number of'} frames; ends at its end)",
        "gstreamer": f"GStreamer pipeline {resolved.shown!r} (live)",
        "stream": f"live stream {resolved.shown}"
        if is_live(resolved, capture)
        else f"video over {resolved.shown} ({frames} frames; ends at its end, never replayed)",
    }[resolved.kind]


@dataclass(frozen=True)
class Frame:
    """One frame as the main thread receives it: ready for the model, or marked to skip."""

    image: np.ndarray | None  # the BGR frame (for overlays); None for a corrupt frame
    batch: np.ndarray | None  # the model input; None for a frame to skip
    captured: float  # time.perf_counter() when the source returned it
    preprocess_ms: float = 0.0


END = Frame(None, None, 0.0)  # the source has ended (or failed for good)


class FramePipeline:
    """Reads a source in a thread and prepares each frame there (decode, ``prepare``); the main
    thread takes ready frames with ``get``. OpenCV and the runtimes release the GIL while they work,
    so reading overlaps inference.

    Live sources: the hand-off slot always holds the newest frame, so a stale frame is never
    classified after a fresher one exists; a source that drops is reopened with backoff.
    Files and folders: the thread reads the next frame as soon as the main thread took the last
    one, so no frame is lost and a frame waits for at most one inference.
    """

    def __init__(
        self,
        opener: Callable[[], object],
        prepare: Callable[[np.ndarray], np.ndarray],
        *,
        source=None,
        backoff: tuple[float, float] = (0.5, 8.0),
        max_reconnects: int = MAX_RECONNECTS,
        report: Callable[[str], None] = lambda line: None,
        name: str = "the source",
    ):
        self.opener, self.prepare, self.backoff, self.max_reconnects = opener, prepare, backoff, max_reconnects
        self.report, self.name = report, name
        self.source = source if source is not None else opener()
        self.live, self.reconnects, self.lost = bool(self.source.is_live), 0, False
        self.slot, self.ended, self.error = None, False, None
        self.condition, self.stopped = threading.Condition(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="frame-pipeline", daemon=True)
        self.thread.start()

    def _read(self) -> Frame | None:
        """The next frame, prepared; None when the source ended or dropped."""
        ok, image = self.source.read()
        captured = time.perf_counter()
        if not ok:
            return None
        if image is None or image.ndim != 3 or image.size == 0:
            return Frame(None, None, captured)
        try:
            batch = self.prepare(image)
        except ValueError:  # not an HxWx3 image: skipped and counted like a corrupt one
            return Frame(None, None, captured)
        return Frame(image, batch, captured, (time.perf_counter() - captured) * 1e3)

    def _run(self) -> None:
        try:
            (self._run_live if self.live else self._run_file)()
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            self.error = exc
        finally:
            self.source.release()  # here, not in stop(): never release a capture another thread reads
            with self.condition:
                self.ended = True
                self.condition.notify_all()

    def _run_file(self) -> None:
        while self._wait_for_room():
            frame = self._read()
            if frame is None:
                shortfall = getattr(self.source, "shortfall", lambda: None)()
                if shortfall:  # said, not silent: the run still ends as the source did
                    self.report(f"source: {self.name} {shortfall}")
                return
            self._hand_over(frame)

    def _run_live(self) -> None:
        """Frames until stopped; a drop is reopened with backoff, at most ``max_reconnects`` times in a row
        without a frame in between, each attempt reported; then the source counts as lost."""
        delay, failures = self.backoff[0], 0
        while not self.stopped.is_set():
            frame = self._read()
            if frame is not None:
                if failures:
                    self.report(f"source: {self.name} is back after {failures} reconnect(s)")
                delay, failures = self.backoff[0], 0
                self._hand_over(frame)
                continue
            if failures >= self.max_reconnects:
                self.lost = not self.stopped.is_set()
                if self.lost:
                    self.report(f"source: {self.name} gave no frame after {failures} reconnect(s) in a row: giving up")
                return
            failures += 1
            self.report(f"source: {self.name} gave no frame; reconnect {failures}/{self.max_reconnects} in {delay:g} s")
            if not self._reconnect(delay):
                return
            delay = min(delay * 2, self.backoff[1])

    def _wait_for_room(self) -> bool:
        with self.condition:
            while self.slot is not None and not self.stopped.is_set():
                self.condition.wait(0.1)
            return not self.stopped.is_set()

    def _hand_over(self, frame: Frame) -> None:
        with self.condition:
            self.slot = frame  # a live source overwrites an untaken frame: the newest wins
            self.condition.notify_all()

    def _reconnect(self, delay: float) -> bool:
        self.source.release()
        if self.stopped.wait(delay):
            return False
        self.reconnects += 1
        try:
            self.source = self.opener()
        except SourceError as exc:  # keep trying: the next read fails and backs off further
            self.report(f"source: {exc}")
        return True

    def get(self, timeout: float) -> Frame | None:
        """The next ready frame, ``END`` when the source is over, or None if nothing came within ``timeout``.

        An exception in the pipeline's thread is raised here, in the caller's."""
        with self.condition:
            self.condition.wait_for(lambda: self.slot is not None or self.ended, timeout)
            frame, self.slot = self.slot, None
            if frame is None and self.ended:
                if self.error is not None:
                    raise self.error
                return END
            self.condition.notify_all()
            return frame

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop and join the thread; False if it is still inside a read after ``timeout`` seconds."""
        self.stopped.set()
        with self.condition:
            self.condition.notify_all()
        self.thread.join(timeout)
        return not self.thread.is_alive()
