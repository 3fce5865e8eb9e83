"""The live loop: capture, classify, smooth, overlay or JSON, FPS, exit, release.

Short enough to read at a glance; each concern (sources, smoothing, drawing) is a small piece.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.classify import Classifier, top_k
from edge_runtime.sources import LatestFrameReader, open_source

SMOOTHING = ("none", "ema", "window")


@dataclass(frozen=True, kw_only=True)
class LiveConfig:
    source: str
    headless: bool = False
    record: Path | None = None
    max_frames: int | None = None
    threshold: float = 0.5  # below this smoothed top-1 score the answer is "unsure"
    smoothing: str = "ema"
    alpha: float = 0.3  # EMA weight of the newest frame
    window: int = 5  # frames averaged by "window"
    top_k: int = 3
    width: int | None = None
    height: int | None = None
    max_reconnects: int | None = None  # None: keep trying forever
    backoff: tuple[float, float] = (0.5, 8.0)  # first and longest wait between reopen attempts, seconds
    publish: Path | None = None  # write latest.jpg + latest.json here for `floraedge serve --camera`


class Smoother:
    """Temporal smoothing of class probabilities: an EMA, or the mean of the last N frames."""

    def __init__(self, mode: str = "ema", *, alpha: float = 0.3, window: int = 5):
        if mode not in SMOOTHING:
            raise ValueError(f"smoothing {mode!r} is not one of {SMOOTHING}")
        self.mode, self.alpha, self.state, self.recent = mode, alpha, None, deque(maxlen=window)

    def update(self, probs: np.ndarray) -> np.ndarray:
        if self.mode == "none":
            return probs
        if self.mode == "window":
            self.recent.append(probs)
            return np.mean(self.recent, axis=0)
        self.state = probs if self.state is None else self.alpha * probs + (1 - self.alpha) * self.state
        return self.state


def decide(probs: np.ndarray, labels: tuple[str, ...], *, threshold: float, k: int) -> dict:
    top = top_k(probs, labels, k)
    unsure = top[0][2] < threshold
    return {
        "label": "unsure" if unsure else top[0][1],
        "score": round(top[0][2], 5),
        "unsure": unsure,
        "top": [{"index": i, "label": name, "score": round(p, 5)} for i, name, p in top],
    }


def draw_overlay(frame: np.ndarray, result: dict, model_ms: float, fps: float) -> np.ndarray:
    """The frame with the label, score, model time and FPS drawn in its top-left corner."""
    out = frame.copy()
    color = (0, 200, 255) if result["unsure"] else (80, 220, 80)
    lines = [f"{result['label']}  {result['score']:.2f}", f"model {model_ms:.1f} ms   {fps:.1f} FPS"]
    for i, text in enumerate(lines):
        y = 28 + 26 * i
        cv2.putText(out, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(out, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, color, 2, cv2.LINE_AA)
    return out


class StopFlag:
    """Set by Ctrl-C or SIGTERM so the loop can release everything and exit cleanly."""

    def __init__(self):
        self.event = threading.Event()
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self.event

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Prefetcher:
    """Decodes the next frames of a file or folder in a thread (bounded queue: nothing is dropped),
    so decoding overlaps inference; OpenCV and the runtimes release the GIL while they work."""

    END = object()

    def __init__(self, source, depth: int = 4):
        self.source, self.queue, self.stopped = source, queue.Queue(maxsize=depth), threading.Event()
        self.thread = threading.Thread(target=self._run, name="frame-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            ok, frame = self.source.read()
            item = (ok and frame is not None, frame) if ok else self.END
            while not self.stopped.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is self.END:
                return

    def read(self) -> tuple[bool, np.ndarray | None]:
        item = self.queue.get()
        return (False, None) if item is self.END else (True, item[1])

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        self.source.release()


class FrameFeed:
    """Newest-frame reads for live sources (via a reader thread), every frame for files and folders."""

    def __init__(self, config: LiveConfig):
        def opener():
            return open_source(config.source, width=config.width, height=config.height)

        first = opener()
        self.reader = (
            LatestFrameReader(opener, source=first, backoff=config.backoff, max_reconnects=config.max_reconnects)
            if first.is_live
            else None
        )
        self.prefetch = None if first.is_live else Prefetcher(first)
        self.source, self.last_id = first, 0

    def next(self) -> tuple[bool, np.ndarray | None]:
        """(False, None) at the end of the source; (True, None) for a frame to skip."""
        if self.reader is None:
            return self.prefetch.read()
        self.last_id, frame = self.reader.latest(self.last_id)
        if frame is None and self.reader.failed:
            return False, None
        return True, frame

    @property
    def reconnects(self) -> int:
        return self.reader.reconnects if self.reader else 0

    def close(self) -> None:
        (self.reader or self.prefetch).stop()


def open_recorder(path: Path, frame: np.ndarray, fps: float = 15.0):
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}")
    return writer


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Sinks:
    """Where each classified frame goes: JSON lines, a window, a recording, a folder `serve --camera` reads."""

    def __init__(self, config: LiveConfig, emit):
        self.config, self.emit, self.writer, self.last_publish = config, emit, None, 0.0
        if config.publish:
            config.publish.mkdir(parents=True, exist_ok=True)

    def needs_overlay(self) -> bool:
        return bool(self.config.record or self.config.publish or not self.config.headless)

    def send(self, record: dict, frame: np.ndarray, prediction) -> bool:
        """Deliver one frame; False when the user asked to quit (q or Esc in the window)."""
        if self.config.headless:
            self.emit(json.dumps(record))
        if not self.needs_overlay():
            return True
        annotated = draw_overlay(frame, record, prediction.model_ms, record["fps"])
        if self.config.record:
            self.writer = self.writer or open_recorder(self.config.record, annotated)
            self.writer.write(annotated)
        if self.config.publish and time.perf_counter() - self.last_publish >= 0.1:  # at most 10 updates/s
            self.last_publish = time.perf_counter()
            write_atomic(self.config.publish / "latest.jpg", cv2.imencode(".jpg", annotated)[1].tobytes())
            write_atomic(self.config.publish / "latest.json", json.dumps(record).encode())
        if not self.config.headless:
            cv2.imshow("FloraEdge", annotated)
            return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if not self.config.headless:
            cv2.destroyAllWindows()


def run_live(classifier: Classifier, config: LiveConfig, emit=print) -> dict:
    """Classify frames from ``config.source`` until it ends, ``max_frames``, 'q', Ctrl-C or SIGTERM."""
    feed, smoother = FrameFeed(config), Smoother(config.smoothing, alpha=config.alpha, window=config.window)
    sinks, stats = Sinks(config, emit), {"frames": 0, "skipped": 0, "started": time.time()}
    fps, last = 0.0, time.perf_counter()
    with StopFlag() as stop:
        try:
            while not stop.is_set() and (config.max_frames is None or stats["frames"] < config.max_frames):
                ok, frame = feed.next()
                if not ok:
                    break
                if frame is None or frame.size == 0 or frame.ndim != 3:
                    stats["skipped"] += 1
                    continue
                prediction = classifier(frame)
                result = decide(
                    smoother.update(prediction.probabilities),
                    classifier.labels,
                    threshold=config.threshold,
                    k=config.top_k,
                )
                now = time.perf_counter()
                fps = 1.0 / max(now - last, 1e-9) if fps == 0 else 0.9 * fps + 0.1 / max(now - last, 1e-9)
                last = now
                stats["frames"] += 1
                record = {
                    "ts": round(time.time(), 3),
                    "frame": stats["frames"],
                    **result,
                    "preprocess_ms": round(prediction.preprocess_ms, 3),
                    "model_ms": round(prediction.model_ms, 3),
                    "fps": round(fps, 2),
                }
                if not sinks.send(record, frame, prediction):
                    break
        finally:
            feed.close()
            sinks.close()
    elapsed = time.time() - stats["started"]
    return {
        **stats,
        "reconnects": feed.reconnects,
        "elapsed_s": round(elapsed, 3),
        "fps": round(stats["frames"] / max(elapsed, 1e-9), 2),
    }
