"""Frame sources for the live loop: camera index, video file, image folder, RTSP/HTTP URL, GStreamer.

Live sources are read by a background thread that keeps only the newest frame (OpenCV's own
buffer would otherwise hand out stale frames), and are reopened with backoff when they drop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import FloraEdgeError
from edge_runtime.preprocess import read_image_or_none

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class SourceError(FloraEdgeError):
    """A source that cannot be opened at all."""


class ImageFolderSource:
    """The images of a folder, in name order, as if they were frames of a video."""

    is_live = False

    def __init__(self, folder: Path):
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.index = 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.index >= len(self.paths):
            return False, None
        path, self.index = self.paths[self.index], self.index + 1
        return True, read_image_or_none(path)  # None for a corrupt or refused file: the loop skips and counts it

    def release(self) -> None:
        self.index = len(self.paths)


class CaptureSource:
    """An OpenCV ``VideoCapture``; ``is_live`` for cameras and streams, not for files."""

    def __init__(self, capture, *, is_live: bool):
        self.capture, self.is_live = capture, is_live

    def read(self):
        return self.capture.read()

    def release(self) -> None:
        self.capture.release()


def describe(source: str) -> str:
    if source.isdigit():
        return "camera"
    if "!" in source:
        return "gstreamer"
    if "://" in source:
        return "stream"
    return "folder" if Path(source).is_dir() else "file"


def open_source(source: str, *, width: int | None = None, height: int | None = None):
    """Open ``source`` (see ``floraedge run --help`` for the forms it takes)."""
    kind = describe(source)
    if kind == "folder":
        return ImageFolderSource(Path(source))
    if kind == "file" and not Path(source).is_file():
        raise SourceError(f"source {source!r} is not a camera index, folder, file, URL or GStreamer pipeline")
    api = {"camera": cv2.CAP_ANY, "gstreamer": cv2.CAP_GSTREAMER, "stream": cv2.CAP_FFMPEG}.get(kind, cv2.CAP_ANY)
    capture = cv2.VideoCapture(int(source) if kind == "camera" else source, api)
    if width and height:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if not capture.isOpened():
        hint = " (is this OpenCV built with GStreamer? see README 'Raspberry Pi')" if kind == "gstreamer" else ""
        raise SourceError(f"could not open {kind} source {source!r}{hint}")
    return CaptureSource(capture, is_live=kind != "file")


class LatestFrameReader:
    """Reads a live source in a thread and keeps only the newest frame; reopens it when it drops."""

    def __init__(
        self,
        opener: Callable[[], object],
        *,
        source=None,
        backoff: tuple[float, float] = (0.5, 8.0),
        max_reconnects: int | None = None,
    ):
        self.opener, self.backoff, self.max_reconnects = opener, backoff, max_reconnects
        self.source = source if source is not None else opener()
        self.frame, self.frame_id, self.reconnects, self.failed = None, 0, 0, False
        self.condition = threading.Condition()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self.stopped.is_set():
            ok, frame = self.source.read()
            if ok:
                delay = self.backoff[0]
                with self.condition:
                    self.frame, self.frame_id = frame, self.frame_id + 1
                    self.condition.notify_all()
                continue
            if not self._reconnect(delay):
                return
            delay = min(delay * 2, self.backoff[1])

    def _reconnect(self, delay: float) -> bool:
        self.source.release()
        if self.max_reconnects is not None and self.reconnects >= self.max_reconnects:
            with self.condition:
                self.failed = True
                self.condition.notify_all()
            return False
        if self.stopped.wait(delay):
            return False
        self.reconnects += 1
        with contextlib.suppress(SourceError):  # keep trying: the next read fails and backs off further
            self.source = self.opener()
        return True

    def latest(self, after: int, timeout: float = 5.0) -> tuple[int, np.ndarray | None]:
        """The newest frame newer than ``after`` (waits up to ``timeout``); (after, None) if none came."""
        with self.condition:
            self.condition.wait_for(lambda: self.frame_id > after or self.failed or self.stopped.is_set(), timeout)
            return (self.frame_id, self.frame) if self.frame_id > after else (after, None)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        self.source.release()
