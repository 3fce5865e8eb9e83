"""What a model file says about itself: its preprocessing spec, class labels and provenance.

ONNX files carry them in ``metadata_props``; a ``.tflite`` file carries them as files in its
appended zip (the standard TFLite metadata layout: ``labels.txt`` plus our ``floraedge.json``).
Sidecar files next to the model (``<model>.json``, or ``spec.json`` + ``labels.txt``) are the
fallback. ``edge_runtime.foreign.resolve_info`` stacks these with what other tools write (standard
TFLite metadata) and the user's options; a model whose normalization nobody states is refused there:
guessing it silently gives wrong answers. The info's ``"output"`` says what the model outputs: ``"probabilities"`` (every file exported since
the softmax moved into the graph) or ``"logits"`` (files that do not say: older exports).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.bounded import SMALL_FILE_BYTES, TooLargeError, open_zip, read_member, read_text_bounded
from edge_runtime.errors import FloraEdgeError
from edge_runtime.spec import PreprocessSpec


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file: how a model file, a checkpoint or a released file is identified.
    Read in blocks: memory stays flat whatever the file's size."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


SPEC_KEY = "floraedge.spec"
LABELS_KEY = "floraedge.labels"
INFO_KEY = "floraedge.info"
EMBEDDED_JSON = "floraedge.json"  # inside a .tflite's zip: {"spec": ..., "info": ...}
PROBABILITIES, LOGITS = "probabilities", "logits"  # the values of info["output"]
# The zip appended to a .tflite holds a few kilobytes of labels and JSON; a member declaring (or
# inflating to) more is refused before it is read: a few MB of model could otherwise inflate to GBs.
MEMBER_MAX_BYTES = SMALL_FILE_BYTES
MEMBERS_MAX = 1000  # ours holds two; a central directory of millions of entries would fill memory when listed


class MetadataError(FloraEdgeError):
    """A model whose preprocessing spec or labels cannot be found."""


@dataclass(frozen=True)
class ModelInfo:
    spec: PreprocessSpec
    labels: tuple[str, ...]
    info: dict = field(default_factory=dict)  # exporter, precision, output, source checkpoint, ...
    # where each spec field, "labels" and "output" came from (edge_runtime.foreign: model, tflite-metadata,
    # sidecar, embedded, flags, default), and what a higher source replaced, in words
    sources: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        """``"probabilities"`` where the file says its output is, else ``"logits"``."""
        return self.info.get("output", LOGITS)


def classifier_title(dataset_name: str | None, num_classes: int) -> str:
    """What a model tells apart, in words (file descriptions, cards, page titles): its dataset and class count."""
    return f"{dataset_name or 'image'} classifier ({num_classes} classes)"


def describe(info: ModelInfo) -> str:
    """``classifier_title`` of a loaded model, from the dataset record embedded at export."""
    dataset = info.info.get("dataset")
    return classifier_title(dataset.get("name") if isinstance(dataset, dict) else None, len(info.labels))


def parse_labels(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def malformed(where: str):
    """Turn the many ways stored metadata can be broken into one ``MetadataError`` naming where."""
    try:
        yield
    except MetadataError:
        raise
    except TooLargeError as exc:
        raise MetadataError(f"{where}: {exc}; re-export the model with `floraedge export`") from exc
    except (ValueError, TypeError, KeyError, AttributeError, zipfile.BadZipFile, OSError) as exc:
        raise MetadataError(
            f"{where} holds malformed metadata ({type(exc).__name__}: {exc}); re-export the model with `floraedge export`"
        ) from exc


def _info(spec, labels, info) -> ModelInfo:
    labels = tuple(labels)
    if not all(isinstance(label, str) for label in labels) or not isinstance(info, dict):
        raise ValueError("labels must be a list of strings and info a JSON object")
    return ModelInfo(spec if isinstance(spec, PreprocessSpec) else PreprocessSpec.from_dict(spec), labels, info)


def from_props(props: dict[str, str]) -> ModelInfo | None:
    """From ONNX ``metadata_props`` (``None`` when the spec key is absent)."""
    if SPEC_KEY not in props:
        return None
    with malformed("the model's ONNX metadata_props"):
        labels = json.loads(props.get(LABELS_KEY, "[]"))
        return _info(PreprocessSpec.from_json(props[SPEC_KEY]), labels, json.loads(props.get(INFO_KEY, "{}")))


def from_tflite_zip(path: Path) -> ModelInfo | None:
    """From the zip appended to a ``.tflite`` file (``None`` when it has none or no spec)."""
    if not zipfile.is_zipfile(path):
        return None
    with malformed(f"the zip inside {path}"), open_zip(path, MEMBERS_MAX) as z:
        names = set(z.namelist())
        if EMBEDDED_JSON not in names:
            return None
        meta = json.loads(read_member(z, EMBEDDED_JSON, MEMBER_MAX_BYTES, str(path)))
        labels = (
            parse_labels(read_member(z, "labels.txt", MEMBER_MAX_BYTES, str(path)).decode())
            if "labels.txt" in names
            else ()
        )
        return _info(meta["spec"], labels, meta.get("info", {}))


def from_sidecar(path: Path) -> ModelInfo | None:
    card = path.with_name(path.name + ".json")  # model_fp32.onnx.json: one per file, never shared
    if card.is_file():
        with malformed(str(card)):
            meta = json.loads(read_text_bounded(card, what="model card"))
            if "spec" in meta:
                return _info(meta["spec"], meta.get("labels", ()), meta)
    spec_file, labels_file = path.parent / "spec.json", path.parent / "labels.txt"
    if spec_file.is_file():
        with malformed(f"{spec_file} or {labels_file.name}"):
            labels = parse_labels(read_text_bounded(labels_file, what="labels file")) if labels_file.is_file() else ()
            return _info(PreprocessSpec.from_json(read_text_bounded(spec_file, what="spec file")), labels, {})
    return None
