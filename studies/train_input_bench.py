"""Feeds docs/training.md (the training input pipeline).

Training input pipeline vs a plain loop that decodes the original JPEGs every epoch.

Both feed the same augmentation, batch size, worker count and threads. Measured twice: the
loader alone (images/s it can deliver) and with the model's training step (what a run gets).

    python -m studies.train_input_bench --data data/flowers --arch efficientnet_lite0 --batches 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.utils.data import DataLoader

from train.config import TrainConfig
from train.data import CachedImages, JpegFolderImages, train_transform
from train.models import build_model, input_spec
from train.schedule import set_epoch_mode


def images_per_s(loader: DataLoader, batches: int, step=None) -> float:
    seen, it = 0, iter(loader)
    next(it)  # worker start-up and the first batch are not throughput
    start = time.perf_counter()
    for _ in range(batches):
        images, targets = next(it)
        if step is not None:
            step(images, targets)
        seen += len(targets)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig(data=args.data, out="", arch=args.arch)  # the default recipe's model and step
    transform = train_transform(input_spec(config.arch, config.img_size), min_scale=config.min_scale)
    start = time.perf_counter()
    cached = CachedImages(args.data, ["train"], transform=transform)
    decode_once_s = time.perf_counter() - start
    plain = JpegFolderImages(args.data, ["train"], transform)
    model = build_model(args.arch, 102, "imagenet").to(memory_format=torch.channels_last)
    set_epoch_mode(model, config, backbone_trainable=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)

    def step(images, targets):
        images = images.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    result = {"decode_cache_once_s": round(decode_once_s, 2)}
    for name, dataset in (("cached", cached), ("plain_jpeg", plain)):
        loader = DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, persistent_workers=False
        )
        result[name] = {
            "loader_only_ips": round(images_per_s(loader, args.batches * 3), 1),
            "with_training_step_ips": round(images_per_s(loader, args.batches, step), 1),
        }
    result["speedup_loader_only"] = round(
        result["cached"]["loader_only_ips"] / result["plain_jpeg"]["loader_only_ips"], 2
    )
    result["speedup_with_model"] = round(
        result["cached"]["with_training_step_ips"] / result["plain_jpeg"]["with_training_step_ips"], 2
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
