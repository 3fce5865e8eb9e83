"""``floraedge classify``: top-k for image files and folders (torch-free)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
BACKEND_CHOICES = ("auto", "onnxruntime", "litert", "opencv")


def add_model_arguments(
    p: argparse.ArgumentParser, threads_help: str = "inference threads (default: the runtime's)"
) -> None:
    p.add_argument("--model", required=True, type=Path, help=".onnx or .tflite file (labels + spec inside)")
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="runtime; auto picks by file type (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.add_argument(
        "--providers",
        default=None,
        help="onnxruntime execution providers, comma-separated, e.g. TensorrtExecutionProvider,CUDAExecutionProvider",
    )
    p.add_argument("--top-k", type=int, default=5, help="(default: %(default)s)")


def add_parser(subparsers) -> None:
    add_classify_parser(subparsers)
    add_run_parser(subparsers)


def add_classify_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="top-k classes for image files and folders (torch-free)",
        description="Classify images with an exported model; labels and preprocessing come "
        "from the model's own metadata.",
        epilog="example:\n  floraedge classify --model export/model_int8.onnx photos/ rose.jpg --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders")
    p.set_defaults(func=run_classify)


def iter_images(paths: list[Path]):
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def open_classifier(args):
    from edge_runtime.backends import load
    from edge_runtime.classify import Classifier

    providers = args.providers.split(",") if args.providers else None
    return Classifier(load(args.model, args.backend, threads=args.threads, providers=providers), k=args.top_k)


def run_classify(args: argparse.Namespace) -> int:
    from edge_runtime.preprocess import ImageReadError, read_image_bgr

    classifier, failures = open_classifier(args), 0
    for path in iter_images(args.images):
        try:
            prediction = classifier(read_image_bgr(path))
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            failures += 1
            continue
        if args.json:
            print(json.dumps({"image": str(path), **prediction.to_dict()}))
        else:
            best = ", ".join(f"{name} {p:.3f}" for _, name, p in prediction.top)
            print(f"{path}: {best}  ({prediction.model_ms:.1f} ms)")
    return 1 if failures else 0


SOURCE_HELP = """where frames come from:
  0, 1, ...                      a camera index (V4L2 / USB webcam)
  clip.mp4                       a video file (ends cleanly at its end)
  photos/                        a folder of images, in name order
  rtsp://user:pw@host/stream     an RTSP or HTTP stream (reopened with backoff when it drops)
  'libcamerasrc ! ... ! appsink' a GStreamer pipeline (Raspberry Pi camera, Jetson CSI camera; see README)"""


def add_run_parser(subparsers) -> None:
    from edge_runtime.live import SMOOTHING

    p = subparsers.add_parser(
        "run",
        help="the live camera loop (torch-free): classify frames, overlay or JSON lines",
        description="Classify live frames on the device. " + SOURCE_HELP,
        epilog="examples:\n  floraedge run --model model_int8.tflite --source 0\n"
        "  floraedge run --model model.onnx --source clip.mp4 --headless --max-frames 100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(
        p,
        threads_help="threads for the model and the frame pipeline together (default: the CPU count); "
        "split as 2 -> model 1 + pipeline 1, 4 -> 3 + 1, 8 -> 6 + 2",
    )
    p.add_argument("--model-threads", type=int, default=None, help="the model's share of --threads (default: as above)")
    p.add_argument("--source", default="0", help="camera index, video file, folder, URL or GStreamer pipeline")
    p.add_argument("--headless", action="store_true", help="no window: one JSON line per classified frame on stdout")
    p.add_argument("--record", type=Path, default=None, help="write the annotated frames to this .mp4")
    p.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="keep the newest annotated frame + result in this folder for `floraedge serve --camera`",
    )
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many classified frames")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="below this smoothed score say 'unsure' (default: %(default)s)"
    )
    p.add_argument("--smoothing", choices=SMOOTHING, default="ema", help="(default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.3, help="EMA weight of the newest frame (default: %(default)s)")
    p.add_argument("--window", type=int, default=5, help="frames averaged by --smoothing window (default: %(default)s)")
    p.add_argument("--width", type=int, default=None, help="ask the camera for this frame width")
    p.add_argument("--height", type=int, default=None, help="ask the camera for this frame height")
    p.set_defaults(func=run_live_command, top_k=3)


def run_live_command(args: argparse.Namespace) -> int:
    import os

    from edge_runtime.live import LiveConfig, run_live, split_threads

    model_threads, pipeline_threads = split_threads(args.threads or os.cpu_count() or 1)
    if args.model_threads:
        model_threads, pipeline_threads = args.model_threads, max(1, (args.threads or 0) - args.model_threads)
    args.threads = model_threads
    config = LiveConfig(
        source=args.source,
        headless=args.headless,
        record=args.record,
        publish=args.publish,
        max_frames=args.max_frames,
        threshold=args.threshold,
        smoothing=args.smoothing,
        alpha=args.alpha,
        window=args.window,
        top_k=args.top_k,
        width=args.width,
        height=args.height,
        pipeline_threads=None if args.backend == "opencv" else pipeline_threads,  # OpenCV DNN shares cv2's threads
    )
    stats = run_live(open_classifier(args), config, emit=lambda line: print(line, flush=True))
    print(json.dumps({"summary": stats}), file=sys.stderr)
    return 0
