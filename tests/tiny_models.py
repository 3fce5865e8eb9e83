"""Tiny ONNX classifiers built with onnx.helper (no torch), with non-trivial random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.metadata import INFO_KEY, LABELS_KEY, SPEC_KEY
from edge_runtime.spec import PreprocessSpec


def tiny_onnx(
    path: Path,
    *,
    num_classes: int = 4,
    spec: PreprocessSpec | None = None,
    labels=None,
    embed: bool = True,
    seed: int = 0,
    output: str | None = None,
) -> Path:
    """Conv 3x3 -> ReLU -> global average pool -> linear (-> softmax where ``output`` is "probabilities");
    dynamic batch; metadata embedded if ``embed``, with ``output`` declared in its info when given."""
    rng = np.random.default_rng(seed)
    spec = spec or PreprocessSpec(crop_size=32, resize_size=36)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (num_classes, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (num_classes,)).astype(np.float32), "fc_b"),
    ]
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
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
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
