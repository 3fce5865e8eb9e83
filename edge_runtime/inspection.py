"""``floraedge inspect MODEL``: what the runtime will use for a model file, and where each part came from.

The model is opened exactly as ``classify``, ``run`` and ``serve`` open it (``backends.load`` with the same
options, trial run included), so what ``inspect`` prints is what they use. ``--write-sidecar`` saves the result
as ``<model>.json`` beside the file, in the form ``edge_runtime.metadata.from_sidecar`` reads: later commands
then need no options. Torch-free.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.cli import BACKEND_CHOICES
from edge_runtime.foreign import (
    DEFAULT,
    EMBEDDED,
    FLAGS,
    MODEL,
    OVERRIDE_OPTIONS,
    SIDECAR,
    SPEC_FIELDS,
    STANDARD,
    ModelOverrides,
    OverrideFields,
)
from edge_runtime.options import Option, add_command, config_from_args

# what each source is, in words (edge_runtime.foreign stacks them in this order, lowest first)
SOURCE_WORDS = {
    MODEL: "the file's input shape",
    STANDARD: "standard TFLite metadata",
    SIDECAR: "the sidecar beside the file",
    EMBEDDED: "FloraEdge metadata in the file",
    FLAGS: "your options",
    DEFAULT: "default",
}
LABELS_SHOWN = 5


def source_words(source: str, field: str) -> str:
    """Where ``field`` came from, in words."""
    if source == MODEL and field == "output":
        return "the file's final operator (a softmax)"
    return SOURCE_WORDS[source]


@dataclass(frozen=True, kw_only=True)
class InspectConfig(OverrideFields):
    model: Path
    backend: str = "auto"
    write_sidecar: bool = False
    json: bool = False


INSPECT_OPTIONS = {
    "model": Option(".onnx or .tflite file, from `floraedge export` or another tool", positional=True),
    "backend": Option("runtime; auto picks by file type", choices=BACKEND_CHOICES),
    **OVERRIDE_OPTIONS,
    "write_sidecar": Option("save what is printed as MODEL.json beside the file: later commands need no options"),
    "json": Option("print one JSON object instead of text"),
}


def add_parser(subparsers) -> None:
    add_command(
        subparsers,
        "inspect",
        InspectConfig,
        INSPECT_OPTIONS,
        run_inspect,
        help="what the runtime uses for a model file (input, output, labels, spec) and where each came from",
        description="Show what `classify`, `run` and `serve` will use for MODEL, and where each part came from: "
        "FloraEdge metadata embedded by `floraedge export`, standard TFLite metadata (MediaPipe Model Maker, "
        "TFLite Support), a sidecar MODEL.json, the file's input shape and final operator, or your options "
        "(which win over the file, and are reported when they replace what it says). A file that says nothing "
        "needs --spec FILE or --mean/--std/--value-range, and --output where it does not end in a softmax. "
        "See docs/own_model.md.",
        epilog="examples:\n"
        "  floraedge inspect mobilenet.tflite                      # MediaPipe Model Maker's file: no options\n"
        "  floraedge inspect resnet18.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \\\n"
        "      --output logits --labels imagenet.txt --write-sidecar  # then: floraedge classify --model resnet18.onnx\n"
        "  floraedge inspect caffe.onnx --color-order BGR --value-range 0-255 --mean 104,117,123 --layout NHWC",
    )


def report(path: Path, backend) -> dict:
    """What the runtime uses for the loaded ``backend`` of ``path``, as a JSON-ready dict."""
    info = backend.info
    return {
        "model": str(path),
        "backend": backend.name,
        "input": {k: (list(v) if isinstance(v, tuple) else v) for k, v in backend.input_details.items()},
        "output": {"scores": len(info.labels), "kind": info.output, "source": info.sources.get("output", DEFAULT)},
        "labels": {
            "count": len(info.labels),
            "first": list(info.labels[:LABELS_SHOWN]),
            "source": info.sources.get("labels", DEFAULT),
        },
        "spec": info.spec.to_dict(),
        "sources": {name: info.sources.get(name, DEFAULT) for name in (*SPEC_FIELDS, "labels", "output")},
        "notes": list(info.notes),
    }


def text_lines(found: dict) -> list[str]:
    """``report()`` as lines for a person: each value with where it came from."""
    i, o, labels = found["input"], found["output"], found["labels"]
    quantization = i.get("quantization")
    lines = [
        f"model    {found['model']} ({found['backend']})",
        f"input    {i.get('name')!r} {i.get('shape')} {i.get('dtype')}"
        + (
            f", quantized with scale {quantization[0]:g} and zero point {quantization[1]} (from the file)"
            if quantization and quantization[0]
            else ""
        ),
        f"output   {o['scores']} scores, {o['kind']}  <- {source_words(o['source'], 'output')}",
        f"labels   {labels['count']}: {', '.join(labels['first'])}{', ...' if labels['count'] > LABELS_SHOWN else ''}"
        f"  <- {source_words(labels['source'], 'labels')}",
        "spec     (how preprocess() turns an image into the input)",
    ]
    for name in SPEC_FIELDS:
        value = found["spec"][name]
        shown = ", ".join(f"{v:.6g}" for v in value) if isinstance(value, list) else str(value)
        lines.append(f"  {name:<14}{shown:<28}<- {source_words(found['sources'][name], name)}")
    lines.append("  (mean and std are in 0-1 units: the input is (pixel / 255 - mean) / std)")
    lines += [f"note: {note}" for note in found["notes"]]
    if found.get("sidecar"):
        lines.append(f"wrote {found['sidecar']}: later commands read it and need no options")
    return lines


def sidecar_record(backend) -> dict:
    """The ``<model>.json`` that ``metadata.from_sidecar`` reads back: spec, labels (where known), output."""
    info = backend.info
    record = {"spec": info.spec.to_dict(), "output": info.output}
    if info.sources.get("labels") != DEFAULT:  # class_<i> stand-ins are not written as if they were names
        record["labels"] = list(info.labels)
    return record | {"written_by": "floraedge inspect", "resolved_from": dict(info.sources)}


def write_sidecar(path: Path, backend) -> Path:
    """``<model>.json`` beside the file itself (symlinks resolved, as ``load`` reads it), written atomically."""
    from edge_runtime.atomic import write_json_atomic
    from edge_runtime.errors import FloraEdgeError

    if EMBEDDED in backend.info.sources.values():
        raise FloraEdgeError(
            f"{path} carries FloraEdge metadata, which the runtime reads before a sidecar: a sidecar would be "
            "ignored; pass the options to each command instead (or re-export the model)"
        )
    target = path.resolve().with_name(path.resolve().name + ".json")
    write_json_atomic(target, sidecar_record(backend))
    return target


def run_inspect(args: argparse.Namespace) -> int:
    from edge_runtime.backends import load

    config = config_from_args(args)
    backend = load(config.model, config.backend, threads=1, overrides=ModelOverrides.of(config))
    found = report(config.model, backend)
    if config.write_sidecar:
        found["sidecar"] = str(write_sidecar(config.model, backend))
    if config.json:
        print(json.dumps(found, indent=1))
    else:
        print("\n".join(text_lines(found)))
    return 0
