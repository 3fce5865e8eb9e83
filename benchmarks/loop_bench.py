"""The live loop's own benchmark: end-to-end FPS over a 640x480 MJPEG clip vs model-only FPS (same
model, same model threads), capture-to-result p99 latency vs the model's p99, and a memory soak
over N frames that stops by itself. Each of ``--rounds`` measures, one after the other, the model alone,
the model beside the pipeline's work, and the loop, so that each ratio is measured in one run even on
a busy machine.

The model beside the pipeline's work: another thread reads, decodes and preprocesses the clip at the
model's own pace (one frame per model-only inference), as the loop's pipeline thread does, while the
model runs back to back. It is what the model gives once a second thread shares this machine's cores,
caches and GIL; ``loop_over_model_beside_pipeline`` sets the loop against it (a reference, not a bound:
the two threads do not interleave exactly as in the loop).

    python -m benchmarks.loop_bench --model exports/lite0/model_int8.tflite --threads 1 --soak-frames 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.measure import latency, rss_mb
from edge_runtime.backends import load
from edge_runtime.classify import Classifier
from edge_runtime.live import LiveConfig, run_live
from edge_runtime.preprocess import preprocess


def synthetic_video(path: Path, frames: int, size=(480, 640)) -> Path:
    """A moving gradient with noise: decodes like camera footage (MJPEG)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (size[1], size[0]))
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    rng = np.random.default_rng(0)
    for i in range(frames):
        base = ((xx + 3 * i) % 256).astype(np.uint8)
        frame = np.dstack([base, ((yy + i) % 256).astype(np.uint8), 255 - base])
        frame[rng.integers(0, size[0], 200), rng.integers(0, size[1], 200)] = 255
        writer.write(frame)
    writer.release()
    return path


def soak(classifier: Classifier, video: Path, frames: int, every: int) -> dict:
    """Run the loop over ``frames`` frames (the clip repeated), sampling RSS every ``every`` frames."""
    samples, count = [], 0

    def emit(line: str) -> None:
        nonlocal count
        count += 1  # across clip repeats (each run numbers its frames from 1)
        if count % every == 0:
            samples.append((count, round(rss_mb(), 1)))

    done = 0
    while done < frames:
        stats = run_live(classifier, LiveConfig(source=str(video), headless=True, max_frames=frames - done), emit=emit)
        done += stats["frames"]
    after_warmup = [mb for n, mb in samples if n > every]  # the first samples include allocator warm-up
    growth = after_warmup[-1] - after_warmup[0] if len(after_warmup) > 1 else 0.0
    return {"frames": done, "rss_samples_mb": samples, "rss_growth_after_warmup_mb": round(growth, 1)}


def model_beside_pipeline(backend, sample: np.ndarray, video: Path, rate: float) -> dict:
    """The model's latency while another thread does the loop's pipeline work (read, decode,
    ``preprocess()``) at ``rate`` frames/s, the model's own pace, as the loop's pipeline does."""
    stop, frames, failure = threading.Event(), [0], []

    def pipeline_work() -> None:
        capture = cv2.VideoCapture(str(video))
        try:
            if not capture.isOpened():
                raise OSError(f"cannot open {video}")
            next_frame = time.perf_counter()
            while not stop.wait(max(0.0, next_frame - time.perf_counter())):
                ok, frame = capture.read()
                if not ok:  # the clip ended: start it again
                    capture.release()
                    capture = cv2.VideoCapture(str(video))
                    continue
                preprocess(frame, backend.info.spec)
                frames[0] += 1
                next_frame = max(next_frame + 1.0 / rate, time.perf_counter())  # late: no catching up
        except Exception as exc:  # noqa: BLE001 - raised again in the measuring thread
            failure.append(exc)
        finally:
            capture.release()

    worker = threading.Thread(target=pipeline_work, name="pipeline-work")
    worker.start()
    started = time.perf_counter()
    try:
        measured = latency(backend, sample, warmup=20, runs=300)
    finally:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]
    return measured | {"pipeline_fps": frames[0] / (time.perf_counter() - started)}


def one_round(classifier: Classifier, backend, sample: np.ndarray, video: Path, pipeline_threads: int) -> dict:
    model_only = latency(backend, sample, warmup=20, runs=300)
    beside = model_beside_pipeline(backend, sample, video, rate=model_only["throughput_ips"])
    loop = run_live(
        classifier,
        LiveConfig(source=str(video), headless=True, pipeline_threads=pipeline_threads),
        emit=lambda line: None,
    )
    return {
        "model_only_fps": model_only["throughput_ips"],
        "model_beside_pipeline_fps": beside["throughput_ips"],
        "pipeline_fps_beside_model": round(beside["pipeline_fps"], 1),
        "model_p99_ms": model_only["p99_ms"],
        "loop_fps": loop["fps"],
        "loop_latency_p50_ms": loop["latency_p50_ms"],
        "loop_latency_p99_ms": loop["latency_p99_ms"],
        "loop_over_model": round(loop["fps"] / model_only["throughput_ips"], 3),
        "loop_over_model_beside_pipeline": round(loop["fps"] / beside["throughput_ips"], 3),
        "latency_p99_over_model_p99": round(loop["latency_p99_ms"] / model_only["p99_ms"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1, help="model threads (default: %(default)s)")
    p.add_argument("--pipeline-threads", type=int, default=1, help="OpenCV threads in the frame pipeline")
    p.add_argument("--video-frames", type=int, default=300)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of model-only, model beside the pipeline, loop (default: %(default)s)",
    )
    p.add_argument("--soak-frames", type=int, default=10000, help="0 skips the soak")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here too")
    args = p.parse_args(argv)
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(args.pipeline_threads)  # as run_live sets it: the beside-pipeline figure needs it too
    try:
        result = measure(args)
    finally:
        cv2.setNumThreads(opencv_threads)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def measure(args: argparse.Namespace) -> dict:
    backend = load(args.model, args.backend, threads=args.threads)
    classifier = Classifier(backend)
    with tempfile.TemporaryDirectory() as tmp:
        video = synthetic_video(Path(tmp) / "clip.avi", args.video_frames)
        sample = preprocess(cv2.VideoCapture(str(video)).read()[1], backend.info.spec)
        rounds = [one_round(classifier, backend, sample, video, args.pipeline_threads) for _ in range(args.rounds)]
        result = {
            "model": str(args.model),
            "backend": backend.name,
            "threads": args.threads,
            "pipeline_threads": args.pipeline_threads,
            "rounds": rounds,
            "median_loop_over_model": float(np.median([r["loop_over_model"] for r in rounds])),
            "median_loop_over_model_beside_pipeline": float(
                np.median([r["loop_over_model_beside_pipeline"] for r in rounds])
            ),
            "median_latency_p99_over_model_p99": float(np.median([r["latency_p99_over_model_p99"] for r in rounds])),
        }
        if args.soak_frames:
            result["soak"] = soak(classifier, video, args.soak_frames, every=max(1, args.soak_frames // 20))
    return result


if __name__ == "__main__":
    sys.exit(main())
