"""Feeds docs/training.md (bf16 training speed against fp32).

Training and validation speed in fp32 against bfloat16 autocast (`floraedge train --precision`),
side by side in one run.

The recipe's model (frozen BatchNorm and early layers, backbone trainable) goes through the trainer's
own ``train_one_epoch`` and ``predict`` on the same synthetic batches, in rounds that alternate
between the variants, so that each ratio is measured under the same load. Three variants: fp32,
``bf16`` as the trainer runs it on a CPU (the depthwise convolutions in fp32, ``engine.depthwise_in_fp32``)
and ``bf16_all`` (every convolution in bfloat16, the trainer before that change). Prints JSON.

    python -m studies.precision_bench --arch efficientnet_lite0 --img-size 256 --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn

from edge_runtime.errors import FloraEdgeError
from train.config import TrainConfig
from train.engine import depthwise_in_fp32, predict, train_one_epoch
from train.models import ARCH_NAMES, build_model
from train.schedule import set_epoch_mode
from train.trainer import mixed_precision


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Variant:
    """One model (the same seeded weights in every variant) with its optimizer, at one precision."""

    def __init__(self, arch: str, dtype: torch.dtype | None, depthwise_fp32: bool):
        torch.manual_seed(0)
        self.model = build_model(arch, 102, "imagenet").to(memory_format=torch.channels_last)
        if depthwise_fp32:
            depthwise_in_fp32(self.model)
        self.dtype = dtype
        self.optimizer = torch.optim.AdamW([q for q in self.model.parameters() if q.requires_grad], 1e-5)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)

    def train_steps(self, batches, recipe: TrainConfig, criterion, device) -> None:
        set_epoch_mode(self.model, recipe, backbone_trainable=True)  # predict() leaves the model in eval mode
        train_one_epoch(
            self.model,
            batches,
            self.optimizer,
            self.scheduler,
            criterion,
            device,
            epoch=0,
            amp_dtype=self.dtype,
            progress=False,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="efficientnet_lite0", choices=ARCH_NAMES)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=3, help="training steps (and validation batches) per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    device = torch.device("cpu")
    try:  # the trainer's own mapping of --precision, and its refusal where bf16 is not native
        bf16 = mixed_precision("bf16", device)[0]
    except FloraEdgeError as exc:
        sys.exit(f"precision_bench: {exc}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch_size, 3, args.img_size, args.img_size)
    batches = [(torch.randn(shape), torch.randint(0, 102, (args.batch_size,))) for _ in range(args.batches)]
    recipe = TrainConfig(data="", out="", arch=args.arch)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    variants = {"fp32": (None, False), "bf16": (bf16, True), "bf16_all": (bf16, False)}
    runs = {name: Variant(args.arch, dtype, depthwise_fp32) for name, (dtype, depthwise_fp32) in variants.items()}

    seconds: dict[str, list[float]] = {f"{kind}_{name}": [] for kind in ("train", "val") for name in runs}
    for run in runs.values():  # warm-up: oneDNN picks its kernels on first use
        run.train_steps(batches, recipe, criterion, device)
    for _ in range(args.rounds):
        for name, run in runs.items():
            seconds[f"train_{name}"].append(timed(lambda run=run: run.train_steps(batches, recipe, criterion, device)))
            seconds[f"val_{name}"].append(
                timed(lambda run=run: predict(run.model, batches, device, amp_dtype=run.dtype))
            )
    images = args.batch_size * args.batches
    result = {k: v for k, v in vars(args).items()} | {"torch": torch.__version__}
    for kind in ("train", "val"):
        fp32 = np.array(seconds[f"{kind}_fp32"])
        result[kind] = {
            f"{name}_images_per_s": round(images / float(np.median(seconds[f"{kind}_{name}"])), 1) for name in runs
        }
        for name in ("bf16", "bf16_all"):  # the median of the per-round ratios
            result[kind][f"{name}_speedup"] = round(float(np.median(fp32 / np.array(seconds[f"{kind}_{name}"]))), 2)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
