"""Feeds docs/serving.md (the loop and the server at the model's speed: CPU time per stage).

CPU time per frame of each stage of the loop and the server (``time.thread_time``: what a
busy machine does to wall-clock time does not count), to see where the time goes.

    python -m studies.stage_cpu --model exports/lite0/model_int8.tflite --image some.jpg
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2

from benchmarks.loop_bench import synthetic_video
from edge_runtime.backends import load
from edge_runtime.classify import Classifier
from edge_runtime.live import Smoother, decide
from edge_runtime.preprocess import center_crop, decode_bgr, preprocess, read_file_bytes, resize_shorter_side


def cpu_ms(fn, runs: int) -> float:
    fn()
    start = time.thread_time()
    for _ in range(runs):
        fn()
    return round((time.thread_time() - start) / runs * 1e3, 3)


def plain(image, spec):
    """The resize-the-whole-image-then-crop path, for comparison."""
    square = center_crop(resize_shorter_side(image, spec.resize_size), spec.crop_size)
    return preprocess(square, spec.replace(resize_size=spec.crop_size))


def stages(classifier: Classifier, frame, data, runs: int) -> dict:
    spec, smoother, batch = classifier.spec, Smoother("ema"), preprocess(frame, classifier.spec)
    image = decode_bgr(data)

    def after_model():
        probs = classifier.predict_batch(batch).probabilities
        json.dumps(decide(smoother.update(probs), classifier.labels, threshold=0.5, k=3))

    return {
        "preprocess_frame": cpu_ms(lambda: preprocess(frame, spec), runs),
        "plain_preprocess_frame": cpu_ms(lambda: plain(frame, spec), runs),
        "model": cpu_ms(lambda: classifier.backend.predict(batch), runs),
        "model_softmax_smoothing_json": cpu_ms(after_model, runs),
        "decode_image": cpu_ms(lambda: decode_bgr(data), runs),
        "decode_image_with_spec": cpu_ms(lambda: decode_bgr(data, spec), runs),
        "preprocess_image": cpu_ms(lambda: preprocess(image, spec), runs),
        "plain_preprocess_image": cpu_ms(lambda: plain(image, spec), runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True, type=Path, help="a JPEG, as a client would upload it")
    p.add_argument("--threads", type=int, default=1, help="model threads (default: %(default)s)")
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args(argv)
    cv2.setNumThreads(1)  # the pipeline's share on a 2-core machine
    classifier = Classifier(load(args.model, threads=args.threads), k=3)
    with tempfile.TemporaryDirectory() as tmp:
        capture = cv2.VideoCapture(str(synthetic_video(Path(tmp) / "clip.avi", args.runs + 1)))
        start = time.thread_time()
        frames = [capture.read()[1] for _ in range(args.runs)]
        result = {"capture_640x480_mjpeg": round((time.thread_time() - start) / args.runs * 1e3, 3)}
    result |= stages(classifier, frames[0], read_file_bytes(args.image), args.runs)
    print(json.dumps({"model": args.model, "image": str(args.image), "cpu_ms_per_frame": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
