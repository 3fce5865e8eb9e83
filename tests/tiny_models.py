"""Tiny classifiers built without torch, with non-trivial random weights: ONNX (onnx.helper) and ncnn (its
text .param and .bin written directly), the same network and weights in both for the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.metadata import INFO_KEY, LABELS_KEY, SPEC_KEY
from edge_runtime.spec import PreprocessSpec


def tiny_weights(num_classes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv_w": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "fc_w": rng.normal(0, 1.0, (num_classes, 8)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, (num_classes,)).astype(np.float32),
    }


def tiny_onnx(
    path: Path,
    *,
    num_classes: int = 4,
    spec: PreprocessSpec | None = None,
    labels=None,
    embed: bool = True,
    seed: int = 0,
    output: str | None = None,
    batch: int | str = "batch",
) -> Path:
    """Conv 3x3 -> ReLU -> global average pool -> linear (-> softmax where ``output`` is "probabilities");
    a dynamic batch unless ``batch`` fixes it (as a plain ``torch.onnx.export`` does); metadata embedded if
    ``embed``, with ``output`` declared in its info when given."""
    spec = spec or PreprocessSpec(crop_size=32, resize_size=36)
    inits = [numpy_helper.from_array(w, name) for name, w in tiny_weights(num_classes, seed).items()]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits" if output != "probabilities" else "z"], transB=1),
    ]
    if output == "probabilities":
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=-1))
    s = spec.crop_size
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if embed:
        labels = labels or [f"flower {i}" for i in range(num_classes)]
        for key, value in (
            (SPEC_KEY, spec.to_json()),
            (LABELS_KEY, json.dumps(labels)),
            (INFO_KEY, json.dumps({"precision": "fp32"} | ({"output": output} if output else {}))),
        ):
            model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


NCNN_RAW_FLOAT32 = np.uint32(0).tobytes()  # the tag before a weight blob in a .bin: float32 values follow


def tiny_ncnn(
    path: Path, *, num_classes: int = 4, spec: PreprocessSpec | None = None, labels=None, seed: int = 0
) -> Path:
    """``tiny_onnx(output="probabilities")``'s network and weights as an ncnn ``.param`` + ``.bin`` pair, with
    the sidecar ``<path>.json`` the export writes (spec, labels, precision fp32, probabilities out)."""
    spec = spec or PreprocessSpec(crop_size=32, resize_size=36)
    w = tiny_weights(num_classes, seed)
    layers = [
        "Input input 0 1 input",
        f"Convolution conv 1 1 input c 0=8 1=3 4=1 5=1 6={w['conv_w'].size}",
        "ReLU relu 1 1 c r",
        "Pooling gap 1 1 r g 0=1 4=1",  # global average
        f"InnerProduct fc 1 1 g z 0={num_classes} 1=1 2={w['fc_w'].size}",
        "Softmax softmax 1 1 z probabilities 0=0 1=1",
    ]
    path.write_text("\n".join(["7767517", f"{len(layers)} {len(layers)}", *layers]) + "\n")
    blobs = [NCNN_RAW_FLOAT32, w["conv_w"].tobytes(), w["conv_b"].tobytes()]  # a bias has no tag
    blobs += [NCNN_RAW_FLOAT32, w["fc_w"].tobytes(), w["fc_b"].tobytes()]
    path.with_suffix(".bin").write_bytes(b"".join(blobs))
    labels = labels or [f"flower {i}" for i in range(num_classes)]
    sidecar = {"spec": spec.to_dict(), "labels": labels, "precision": "fp32", "output": "probabilities"}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path
