"""The live loop: capture, classify, smooth, overlay or JSON, FPS, exit, release.

Short enough to read at a glance; each concern (sources, smoothing, drawing) is a small piece.
Capture, decoding and ``preprocess()`` run in the source's thread (``FramePipeline``); the main
thread runs only the model, the smoothing and the sinks, and never waits without a timeout, so
Ctrl-C and SIGTERM stop it promptly whatever the source is doing.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.classify import Classifier, top_k
from edge_runtime.preprocess import preprocess
from edge_runtime.sources import END, MAX_RECONNECTS, FramePipeline, SourceKind, open_source, resolve_source
from edge_runtime.window import NO_WINDOW_WAYS, Window, WindowError, window_problem

SMOOTHING = ("none", "ema", "window")
POLL_S = 0.1  # the longest the main thread waits for a frame before it looks at the stop flag again
LATENCY_WINDOW = 4096  # frames kept for the latency percentiles in the summary


def split_threads(total: int) -> tuple[int, int]:
    """(model, pipeline) threads for a budget of ``total``: the pipeline (capture, decode, resize) gets
    one thread up to 7 cores and two from 8, the model the rest: 2 -> (1, 1), 4 -> (3, 1), 8 -> (6, 2)."""
    pipeline = 1 if total < 8 else 2
    return max(1, total - pipeline), pipeline


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
    source_kind: str = "auto"  # what ``source`` is; "gstreamer" is never guessed
    max_reconnects: int = MAX_RECONNECTS  # reopen attempts in a row without a frame before a live source is lost
    backoff: tuple[float, float] = (0.5, 8.0)  # first and longest wait between reopen attempts, seconds
    publish: Path | None = None  # write latest.jpg + latest.json here for `floraedge serve --camera`
    pipeline_threads: int | None = None  # OpenCV threads for decode/resize in the source's thread; None: leave as is
    show_window: bool | None = None  # None: a window unless headless (refused where none can open; see plan_window)
    window_title: str = "FloraEdge"


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


def plan_window(config: LiveConfig, report=lambda line: None) -> bool:
    """Whether the run shows a window, decided before the first frame: not when headless; where none can open,
    the other outputs asked for run without it (said through ``report``), and with none asked for, WindowError."""
    if config.show_window is not None or config.headless:
        return bool(config.show_window) and not config.headless
    problem = window_problem()
    if problem is None:
        return True
    if config.record or config.publish:
        report(f"output: no window ({problem})")
        return False
    raise WindowError(f"cannot show the overlay window: {problem}; instead use {NO_WINDOW_WAYS}")


def describe_outputs(config: LiveConfig, window: bool) -> str:
    parts = ["JSON lines on stdout"] if config.headless else []
    parts += [f"a window {config.window_title!r} (q or Esc quits, as does closing it)"] if window else []
    parts += [f"a recording to {config.record}"] if config.record else []
    parts += [f"the newest frame in {config.publish} for floraedge serve --camera"] if config.publish else []
    return "output: " + ", ".join(parts)


def open_pipeline(
    config: LiveConfig, classifier: Classifier, source: SourceKind, report, outputs: str
) -> FramePipeline:
    """The source opened, then it and the ``outputs`` said (before its thread can report a drop, and only once
    it opened: a source that cannot open ends in its one error line), then its pipeline started."""

    def opener():
        return open_source(source, width=config.width, height=config.height, spec=classifier.spec)

    opened = opener()
    describe = getattr(opened, "describe", None)
    report(f"source: {describe() if describe else source.shown}")
    report(outputs)
    return FramePipeline(
        opener,
        lambda image: preprocess(image, classifier.spec),
        source=opened,
        backoff=config.backoff,
        max_reconnects=config.max_reconnects,
        report=report,
        name=source.shown,
    )


def open_recorder(path: Path, frame: np.ndarray, fps: float = 15.0):
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}")
    return writer


class Sinks:
    """Where each classified frame goes: JSON lines, a window, a recording, a folder `serve --camera` reads."""

    def __init__(self, config: LiveConfig, emit, window: Window | None = None):
        self.config, self.emit, self.window, self.writer, self.last_publish = config, emit, window, None, 0.0
        if config.publish:
            config.publish.mkdir(parents=True, exist_ok=True)

    def needs_overlay(self) -> bool:
        return bool(self.config.record or self.config.publish or self.window)

    def send(self, record: dict, frame: np.ndarray, prediction) -> bool:
        """Deliver one frame; False when the user asked to quit (q or Esc in the window, or closed it)."""
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
            write_bytes_atomic(self.config.publish / "latest.jpg", cv2.imencode(".jpg", annotated)[1].tobytes())
            write_bytes_atomic(self.config.publish / "latest.json", json.dumps(record).encode())
        return self.window.show(annotated) if self.window else True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.window is not None:
            self.window.close()


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


class LoopStats:
    """Frame counts, the FPS shown on the overlay, and recent capture-to-result latencies."""

    def __init__(self):
        self.frames, self.skipped, self.started, self.fps, self.last = 0, 0, time.time(), 0.0, time.perf_counter()
        self.latency_ms, self.model_ms = deque(maxlen=LATENCY_WINDOW), deque(maxlen=LATENCY_WINDOW)

    def tick(self, latency_ms: float, model_ms: float) -> None:
        now = time.perf_counter()
        rate = 1.0 / max(now - self.last, 1e-9)
        self.fps, self.last = (rate if self.fps == 0 else 0.9 * self.fps + 0.1 * rate), now
        self.frames += 1
        self.latency_ms.append(latency_ms)
        self.model_ms.append(model_ms)

    def summary(self, reconnects: int, threads_left: int, ended: str) -> dict:
        elapsed = time.time() - self.started
        return {
            "ended": ended,
            "frames": self.frames,
            "skipped": self.skipped,
            "started": self.started,
            "reconnects": reconnects,
            "elapsed_s": round(elapsed, 3),
            "fps": round(self.frames / max(elapsed, 1e-9), 2),
            "latency_p50_ms": percentile(self.latency_ms, 50),
            "latency_p99_ms": percentile(self.latency_ms, 99),
            "model_p50_ms": percentile(self.model_ms, 50),
            "model_p99_ms": percentile(self.model_ms, 99),
            "threads_left": threads_left,
        }


def classify_frame(classifier: Classifier, smoother: Smoother, frame, config: LiveConfig, stats: LoopStats):
    """The model, the smoothing and the decision for one prepared frame: (record, prediction)."""
    prediction = classifier.predict_batch(frame.batch, preprocess_ms=frame.preprocess_ms)
    result = decide(
        smoother.update(prediction.probabilities), classifier.labels, threshold=config.threshold, k=config.top_k
    )
    latency_ms = (time.perf_counter() - frame.captured) * 1e3
    stats.tick(latency_ms, prediction.model_ms)
    record = {
        "ts": round(time.time(), 3),
        "frame": stats.frames,
        **result,
        "preprocess_ms": round(prediction.preprocess_ms, 3),
        "model_ms": round(prediction.model_ms, 3),
        "latency_ms": round(latency_ms, 3),
        "fps": round(stats.fps, 2),
    }
    return record, prediction


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_live(classifier: Classifier, config: LiveConfig, emit=print, report=lambda line: None) -> dict:
    """Classify frames from ``config.source`` until it ends, ``max_frames``, 'q', Ctrl-C or SIGTERM.

    What the source is and where the results go are said through ``report`` (the CLI: ``stderr_line``) before
    the first frame, and so is each reconnect of a live source; the
    summary says why the loop ``ended`` ("source ended", "source lost", "max frames", "quit key",
    "window closed", "stopped": a signal).
    Its latencies run from the moment the source returned a frame to its result (``latency_*``) and over
    the model alone (``model_*``), over the last 4096 frames.
    """
    source, show = resolve_source(config.source, config.source_kind), plan_window(config, report)
    if config.pipeline_threads:
        cv2.setNumThreads(config.pipeline_threads)
    pipeline = open_pipeline(config, classifier, source, report, describe_outputs(config, show))
    smoother = Smoother(config.smoothing, alpha=config.alpha, window=config.window)
    sinks, stats, ended = Sinks(config, emit, Window(config.window_title) if show else None), LoopStats(), "stopped"
    with StopFlag() as stop:
        try:
            while not stop.is_set():
                if config.max_frames is not None and stats.frames >= config.max_frames:
                    ended = "max frames"
                    break
                frame = pipeline.get(timeout=POLL_S)
                if frame is END:
                    ended = "source lost" if pipeline.lost else "source ended"
                    break
                if frame is None:  # nothing yet: look at the stop flag again
                    continue
                if frame.batch is None:
                    stats.skipped += 1
                    continue
                record, prediction = classify_frame(classifier, smoother, frame, config, stats)
                if not sinks.send(record, frame.image, prediction):
                    ended = sinks.window.reason if sinks.window else "quit"
                    break
        finally:
            joined = pipeline.stop()
            sinks.close()
    return stats.summary(pipeline.reconnects, threads_left=0 if joined else 1, ended=ended)
