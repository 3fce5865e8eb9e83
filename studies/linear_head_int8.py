"""Feeds docs/own_classes.md ("The linear fit's int8 files").

How should ``train --recipe linear`` fit its head so that the int8 ONNX file keeps its accuracy? Every
candidate fits the same cached features and is scored the same way, without one export per candidate:

- the training features as the recipe computes them (each cached image and its mirror, bf16 autocast
  where the CPU has it), and the same through the backbone with its convolution weights rounded as the
  x86 int8 ONNX file stores them (symmetric per output channel: 7 bits where x86's kernel sums product
  pairs, 8 bits in the depthwise layers; export.converters.seven_bit);
- val and test features at the device's preprocessing (the original JPEGs, as the export gate reads them):
  fp32 PyTorch, and the head inputs of an int8 ONNX file (``--onnx``, an export of a linear fit of the same
  backbone with ``--allow-drop``), read at the Gemm's input, after its DequantizeLinear;
- each candidate head is then scored as PyTorch (fp32 features) and as the int8 ONNX file computes it (the
  file's features times the head's weights rounded as the file rounds them: 7 bits per class row).
  That emulation reproduces the file exactly: for the head that the file holds, the same drop and
  agreement as the export gate.

The int8 TFLite file is not emulated here: export the chosen candidates and read the gate.

    python -m studies.linear_head_int8 --data runs/clothing/data --onnx exports/model_int8.onnx --work /tmp/lin
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_runtime.metrics import classification_metrics
from train.data import CachedImages, dataset_classes, eval_loader
from train.engine import seeded
from train.fixres import head_inputs, one_thread
from train.models import build_model, get_entry, input_spec

ARCH = "efficientnet_lite0"
# name -> (training features, options of the fit); "float": the recipe's features, "rounded": the same through
# the rounded backbone, "mirror-rounded": each image's own features in float and its mirror's rounded
CANDIDATES = {
    "weight decay 0.05 (the recipe before)": ("float", {}),
    "rounded mirrors": ("mirror-rounded", {}),
    "float + rounded features": ("float+rounded", {}),
    "Gaussian noise (per-feature std of rounded - float)": ("float", {"noise": 1.0}),
    "label smoothing 0.3": ("float", {"label_smoothing": 0.3}),
    "weight decay 0.5": ("float", {"weight_decay": 0.5}),
    "weight decay 1.0 (the recipe now)": ("float", {"weight_decay": 1.0}),
    "weight decay 2.0": ("float", {"weight_decay": 2.0}),
    "weight decay 5.0": ("float", {"weight_decay": 5.0}),
    "weight decay 1.0 + rounded mirrors": ("mirror-rounded", {"weight_decay": 1.0}),
    "weight decay 1.0 + float + rounded": ("float+rounded", {"weight_decay": 1.0}),
    "weight decay 1.0 + noise": ("float", {"weight_decay": 1.0, "noise": 1.0}),
}


def rounded_per_channel(weight: torch.Tensor, levels: int) -> torch.Tensor:
    """Symmetric per-output-channel rounding to [-levels, levels] (64: onnxruntime's reduced range, 127: int8)."""
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / levels
    return (torch.clamp(torch.round(flat / scale), -levels, levels) * scale).reshape(weight.shape)


@torch.no_grad()
def round_like_x86_onnx(model: nn.Module) -> None:
    """The convolution weights as the ``x86`` preset stores them (per output channel, so BatchNorm folding
    into them later changes nothing): 8 bits in depthwise layers, 7 bits elsewhere."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.weight.shape[1] == 1
            module.weight.copy_(rounded_per_channel(module.weight, 127 if depthwise else 64))


def the_originals(images: CachedImages) -> CachedImages:
    images.rows = [dict(r, cache_path=r["path"]) for r in images.rows]  # as export's verification reads them
    return images


def backbone_features(data: Path, split: str, *, rounded: bool, device_preprocessing: bool, bf16: bool):
    with seeded(0, torch.device("cpu")):
        model = build_model(ARCH, len(dataset_classes(data)), "imagenet").eval()
    if rounded:
        round_like_x86_onnx(model)
    images = CachedImages(data, [split], spec=input_spec(ARCH), in_memory=False)
    if device_preprocessing:
        the_originals(images)
    head = model.get_submodule(get_entry(ARCH).head)
    dtype = torch.bfloat16 if bf16 else None
    return head_inputs(model.to(memory_format=torch.channels_last), head, eval_loader(images, 2), None, False, dtype)


def onnx_features(data: Path, split: str, onnx_file: Path):
    """The head inputs of an int8 ONNX file (the Gemm's dequantized input) for each image, then each mirror."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_file))
    gemm_input = next(n for n in model.graph.node if n.op_type == "Gemm").input[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(gemm_input, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = the_originals(CachedImages(data, [split], spec=input_spec(ARCH), in_memory=False))
    rows, labels = {False: [], True: []}, []
    for i in range(len(images)):
        image, label = images[i]
        labels.append(label)
        for mirror in (False, True):
            batch = np.ascontiguousarray((image.flip(2) if mirror else image).numpy()[None])
            rows[mirror].append(session.run([gemm_input], {name: batch})[0].reshape(1, -1))
    return torch.from_numpy(np.concatenate(rows[False] + rows[True])), torch.tensor(labels + labels)


def cached(path: Path, compute):
    if not path.exists():
        start = time.perf_counter()
        torch.save(compute(), path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)
    return torch.load(path)


def fit(features, labels, initial: dict, *, weight_decay=0.05, label_smoothing=0.1, noise=None, epochs=30, lr=2e-3):
    """train.fixres.fit_head with the recipe's defaults, plus Gaussian noise on the features of every step."""
    head = nn.Linear(features.shape[1], int(labels.max()) + 1)
    head.load_state_dict(initial)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(labels) / 32)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    generator = torch.Generator().manual_seed(0)
    with torch.enable_grad(), one_thread():
        for _ in range(epochs):
            for batch in torch.randperm(len(labels), generator=generator).split(32):
                x = features[batch]
                if noise is not None:
                    x = x + noise * torch.randn(x.shape, generator=generator)
                loss = criterion(head(x), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return head


@torch.no_grad()
def score(head: nn.Linear, float_features, int8_features, labels) -> dict:
    n = len(labels) // 2  # the images; the mirrors follow
    y = labels[:n].numpy()
    reference = head(float_features[:n])
    int8 = int8_features[:n] @ rounded_per_channel(head.weight, 64).T + head.bias
    classes = head.out_features
    pytorch, file = (classification_metrics(x.numpy(), y, classes) for x in (reference, int8))
    return {
        "top1": 100 * pytorch["top1"],
        "mean_per_class": 100 * pytorch["mean_per_class"],
        "drop": 100 * (pytorch["top1"] - file["top1"]),
        "agreement": 100 * (reference.argmax(1) == int8.argmax(1)).float().mean().item(),
    }


def training_set(kind: str, plain, rounded):
    (f, y), (q, _) = plain, rounded
    n = len(y) // 2
    if kind == "mirror-rounded":
        return torch.cat([f[:n], q[n:]]), y
    if kind == "float+rounded":
        return torch.cat([f, q]), torch.cat([y, y])
    return f, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset")
    parser.add_argument("--onnx", type=Path, required=True, help="an int8 ONNX export of a linear fit (x86 preset)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the cached features")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    plain = cached(
        args.work / "train_float.pt",
        lambda: backbone_features(args.data, "train", rounded=False, device_preprocessing=False, bf16=True),
    )
    rounded = cached(
        args.work / "train_rounded.pt",
        lambda: backbone_features(args.data, "train", rounded=True, device_preprocessing=False, bf16=True),
    )
    evaluation = {}
    for split in ("val", "test"):
        f = cached(
            args.work / f"{split}_float.pt",
            lambda s=split: backbone_features(args.data, s, rounded=False, device_preprocessing=True, bf16=False),
        )
        q = cached(args.work / f"{split}_onnx.pt", lambda s=split: onnx_features(args.data, s, args.onnx))
        evaluation[split] = (f[0], q[0], f[1])
    with seeded(0, torch.device("cpu")):  # the recipe's initial head
        initial = (
            build_model(ARCH, len(dataset_classes(args.data)), "imagenet")
            .get_submodule(get_entry(ARCH).head)
            .state_dict()
        )
    noise_std = (rounded[0] - plain[0]).std(0)
    print(
        "| candidate | val top-1 | val mean per-class | val drop | val agreement | test top-1 | test drop | test agreement |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (kind, options) in CANDIDATES.items():
        options = dict(options)
        if "noise" in options:
            options["noise"] = options["noise"] * noise_std
        head = fit(*training_set(kind, plain, rounded), initial, **options)
        val, test = (score(head, *evaluation[s]) for s in ("val", "test"))
        cells = [
            val["top1"],
            val["mean_per_class"],
            val["drop"],
            val["agreement"],
            test["top1"],
            test["drop"],
            test["agreement"],
        ]
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)
    print(json.dumps({"noise_std_mean": noise_std.mean().item()}))


if __name__ == "__main__":
    main()
