"""Training and validation speed in fp32 against bfloat16 autocast (`floraedge train --precision`),
side by side in one run.

The recipe's model (frozen BatchNorm and early layers, backbone trainable) goes through the trainer's
own ``train_one_epoch`` and ``predict`` on the same synthetic batches, in rounds that alternate
between the precisions, so that each ratio is measured under the same load. Prints JSON.

    python -m benchmarks.precision_bench --arch efficientnet_lite0 --img-size 256 --threads 1 --rounds 5
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
from train.engine import predict, train_one_epoch
from train.models import ARCH_NAMES, build_model
from train.schedule import set_epoch_mode
from train.trainer import mixed_precision


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
        precisions = {name: mixed_precision(name, device)[0] for name in ("fp32", "bf16")}
    except FloraEdgeError as exc:
        sys.exit(f"precision_bench: {exc}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch_size, 3, args.img_size, args.img_size)
    batches = [(torch.randn(shape), torch.randint(0, 102, (args.batch_size,))) for _ in range(args.batches)]
    model = build_model(args.arch, 102, "imagenet").to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], 1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    recipe = TrainConfig(data="", out="", arch=args.arch)

    def train_steps(dtype):
        set_epoch_mode(model, recipe, backbone_trainable=True)  # predict() leaves the model in eval mode
        train_one_epoch(
            model, batches, optimizer, scheduler, criterion, device, epoch=0, amp_dtype=dtype, progress=False
        )

    seconds: dict[str, list[float]] = {f"{kind}_{name}": [] for kind in ("train", "val") for name in precisions}
    for dtype in precisions.values():  # warm-up: oneDNN picks its kernels on first use
        train_steps(dtype)
    for _ in range(args.rounds):
        for name, dtype in precisions.items():
            seconds[f"train_{name}"].append(timed(lambda dtype=dtype: train_steps(dtype)))
            seconds[f"val_{name}"].append(timed(lambda dtype=dtype: predict(model, batches, device, amp_dtype=dtype)))
    images = args.batch_size * args.batches
    result = {k: v for k, v in vars(args).items()} | {"torch": torch.__version__}
    for kind in ("train", "val"):
        fp32, bf16 = np.array(seconds[f"{kind}_fp32"]), np.array(seconds[f"{kind}_bf16"])
        result[kind] = {
            "fp32_images_per_s": round(images / float(np.median(fp32)), 1),
            "bf16_images_per_s": round(images / float(np.median(bf16)), 1),
            "bf16_speedup": round(float(np.median(fp32 / bf16)), 2),  # the median of the per-round ratios
        }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
