"""Frame sources for the live loop: camera index, video file, image folder, RTSP/HTTP URL, GStreamer.

A ``FramePipeline`` reads the source in a background thread and also decodes and preprocesses
each frame there, so the main thread only runs the model. Live sources keep only the newest
frame (OpenCV's own buffer would otherwise hand out stale frames) and are reopened with backoff
when they drop; files and folders lose no frame.
"""

from __future__ import annotations

import contextlib
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


class SourceError(FloraEdgeError):
    """A source that cannot be opened at all."""


class ImageFolderSource:
    """The images of a folder, in name order, as if they were frames of a video."""

    is_live = False

    def __init__(self, folder: Path, spec: PreprocessSpec | None = None):
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.index, self.spec = 0, spec

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.index >= len(self.paths):
            return False, None
        path, self.index = self.paths[self.index], self.index + 1
        # the spec lets a large JPEG decode at reduced size; a FIFO or device is refused, not waited on
        return True, read_image_or_none(path, self.spec)  # None for a corrupt or refused file: skipped and counted

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


def open_source(
    source: str, *, width: int | None = None, height: int | None = None, spec: PreprocessSpec | None = None
):
    """Open ``source`` (see ``floraedge run --help`` for the forms it takes)."""
    kind = describe(source)
    if kind == "folder":
        return ImageFolderSource(Path(source), spec)
    if kind == "file" and not Path(source).is_file():
        raise SourceError(f"source {source!r} is not a camera index, folder, file, URL or GStreamer pipeline")
    api = {"camera": cv2.CAP_ANY, "gstreamer": cv2.CAP_GSTREAMER, "stream": cv2.CAP_FFMPEG}.get(kind, cv2.CAP_ANY)
    params = (
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        if kind == "stream"
        else []
    )
    capture = cv2.VideoCapture(int(source) if kind == "camera" else source, api, params)
    if width and height:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if not capture.isOpened():
        hint = " (is this OpenCV built with GStreamer? see README 'Raspberry Pi')" if kind == "gstreamer" else ""
        raise SourceError(f"could not open {kind} source {source!r}{hint}")
    return CaptureSource(capture, is_live=kind != "file")


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
        max_reconnects: int | None = None,
    ):
        self.opener, self.prepare, self.backoff, self.max_reconnects = opener, prepare, backoff, max_reconnects
        self.source = source if source is not None else opener()
        self.live, self.reconnects = bool(self.source.is_live), 0
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
                return
            self._hand_over(frame)

    def _run_live(self) -> None:
        delay = self.backoff[0]
        while not self.stopped.is_set():
            frame = self._read()
            if frame is not None:
                delay = self.backoff[0]
                self._hand_over(frame)
            elif not self._reconnect(delay):
                return
            else:
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
        if self.max_reconnects is not None and self.reconnects >= self.max_reconnects:
            return False
        if self.stopped.wait(delay):
            return False
        self.reconnects += 1
        with contextlib.suppress(SourceError):  # keep trying: the next read fails and backs off further
            self.source = self.opener()
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
