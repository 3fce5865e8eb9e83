"""``floraedge train`` and ``floraedge evaluate``: options generated from ``TrainConfig`` and
``EvaluateConfig`` (torch is imported only when a command runs)."""

from __future__ import annotations

import argparse
import json

from edge_runtime import console
from edge_runtime.cli import number
from edge_runtime.options import Option, add_command, config_from_args
from train.config import PRECISIONS, RECIPES, EvaluateConfig, FixresConfig, SoupConfig, TrainConfig
from train.models import ARCH_NAMES

TRAIN_OPTIONS = {
    "data": Option("a folder written by `floraedge prepare`"),
    "out": Option("run directory"),
    "recipe": Option(
        "finetune: the whole recipe below (best accuracy, hours on a CPU); linear: a first model in minutes: the "
        "pretrained backbone stays frozen, its features of every training image and its mirror are computed once "
        "and a linear head is fitted on them for --epochs passes with --lr, --weight-decay, --label-smoothing and "
        "--batch-size (the augmentation, backbone, precision and schedule options do not apply); same best.pt",
        choices=RECIPES,
    ),
    "arch": Option(
        "backbone (default: %(default)s, the one every recipe and the released model use: small and fast as an int8 "
        "file on a Pi, and its ImageNet weights ship with the package, offline; resnet50 is the larger reference)",
        choices=ARCH_NAMES,
    ),
    "weights": Option(
        "'imagenet' (offline for efficientnet_lite*, downloaded for torchvision models), 'none', or a local state_dict file"
    ),
    "epochs": Option(parse=number(low=1)),
    "head_epochs": Option("epochs that train only the new head first", parse=number(low=0)),
    "batch_size": Option(parse=number(low=1)),
    "lr": Option("head learning rate"),
    "backbone_lr_scale": Option("backbone LR = lr x this"),
    "weight_decay": Option(
        "AdamW weight decay (default: 0.05 for --recipe finetune, 1.0 for linear: a head on frozen features needs "
        "the wider margins to keep its int8 files' accuracy, docs/own_classes.md)",
        parse=number(float, low=0),
    ),
    "warmup_epochs": Option("linear LR warm-up, in epochs"),
    "label_smoothing": Option(),
    "min_scale": Option("RandomResizedCrop minimum area"),
    "trivial_augment": Option("turn TrivialAugmentWide off", flag="--no-trivial-augment"),
    "freeze_bn": Option("train BatchNorm (default: frozen)", flag="--train-bn"),
    "freeze_early": Option(
        "also fine-tune the backbone's high-resolution early layers (default: frozen; slower on a CPU: docs/training.md)",
        flag="--train-early-layers",
    ),
    "precision": Option(
        "arithmetic of the training steps: auto (fp16 mixed precision on CUDA, fp32 elsewhere), fp32, bf16 "
        "(bfloat16 autocast, on CPUs with AVX512-BF16 or AMX: faster training steps and forward passes, "
        "docs/training.md; the depthwise layers kept in fp32 where gradients flow; weights and optimizer "
        "stay fp32; per-epoch validation in bf16, the final report in fp32), fp16 (CUDA). With --recipe linear, "
        "auto computes the training features in bf16 wherever the CPU or GPU has it natively (val stays fp32)",
        choices=PRECISIONS,
    ),
    "ema_epochs": Option(
        "keep an exponential moving average of the weights over about this many epochs (0: off); "
        "validation and the checkpoints use the averaged weights",
        parse=number(float, low=0),
    ),
    "teachers": Option(
        "comma-separated checkpoints (best.pt of `floraedge train`, same class list) to distil from: every teacher "
        "sees the student's augmented batch; several are an ensemble (probabilities averaged) (default: none)"
    ),
    "distill_weight": Option(
        "with --teachers: loss = w * T^2 * KL(teachers || student) + (1 - w) * label loss (1: the teachers alone)",
        parse=number(float, low=0, high=1),
    ),
    "distill_temperature": Option("with --teachers: softmax temperature T", parse=number(float, low=0, low_open=True)),
    "img_size": Option("input resolution (default: the backbone's own)", parse=number(low=16)),
    "train_splits": Option("comma-separated splits to train on"),
    "val_split": Option(
        "split for best-by-validation",
        none_flag="--no-val",
        none_help="no validation split (the final train+val protocol): all --epochs run, best.pt is the last epoch",
    ),
    "tta_flip": Option(
        "validate every epoch with flip test-time augmentation (2x the validation time; "
        "the final report gives both either way)",
        flag="--tta",
    ),
    "patience": Option("early-stop after this many epochs without improvement; 0 = off", parse=number(low=0)),
    "seed": Option(),
    "workers": Option("DataLoader worker processes", parse=number(low=0)),
    "threads": Option("torch CPU threads (default: torch's choice)", parse=number(low=1)),
    "device": Option("auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps"),
    "resume": Option(
        "continue the run in --out from last.pt, with the options it started with (only --data's place, --workers, --threads, --device, --patience and progress may change)"
    ),
    "overwrite": Option("replace an existing run directory"),
    "progress": Option("no progress bars", flag="--no-progress"),
}

EVALUATE_OPTIONS = {
    "checkpoint": Option("a model bundle (best.pt) from `floraedge train`"),
    "data": Option("a prepared dataset folder"),
    "ensemble": Option(
        "comma-separated further checkpoints (same class list): the ensemble of all, their probabilities "
        "averaged as --teachers does, is evaluated (default: none)"
    ),
    "split": Option(),
    "tta_flip": Option("average with the horizontally flipped image", flag="--tta"),
    "out": Option("folder for metrics.json, per_class.csv, confusion.csv"),
}


SOUP_OPTIONS = {
    "checkpoints": Option(
        "two or more checkpoints (best.pt) fine-tuned from the same pretrained weights: one architecture, class "
        "list and preprocessing (input sizes may differ; the soup takes the first one's)",
        positional=True,
    ),
    "out": Option("the soup's checkpoint file (e.g. runs/soup/best.pt)"),
    "data": Option(
        "a prepared dataset: evaluate every ingredient and the soup on --split (needed for --greedy) (default: none)"
    ),
    "split": Option("held-out split to evaluate and choose on (none of the ingredients may have trained on it)"),
    "greedy": Option(
        "greedy soup: add the ingredients best first, each only if the soup's --split accuracy does not fall "
        "(default: the uniform soup of all)"
    ),
    "overwrite": Option("replace an existing --out"),
}

FIXRES_OPTIONS = {
    "checkpoint": Option("a model bundle (best.pt) from `floraedge train` (or soup)"),
    "data": Option(
        "the prepared dataset it was trained on, cached at least at the new resize size (prepare --cache-size: "
        "293 for 256 px)"
    ),
    "out": Option("the re-fitted checkpoint file (e.g. runs/lite0-224/fixres256.pt)"),
    "img_size": Option(
        "the test resolution to re-fit at, usually above the training one (default: the checkpoint's own)",
        parse=number(low=16),
    ),
    "epochs": Option("passes over the cached features (each costs next to nothing)", parse=number(low=1)),
    "lr": Option("classifier learning rate, cosine-decayed to 0", parse=number(float, low=0, low_open=True)),
    "weight_decay": Option("AdamW weight decay", parse=number(float, low=0)),
    "label_smoothing": Option(parse=number(float, low=0, high=1)),
    "batch_size": Option(parse=number(low=1)),
    "train_splits": Option(
        "comma-separated splits to re-fit on (default: the ones the checkpoint was trained on, as it records them)"
    ),
    "val_split": Option(
        "split evaluated before and after the re-fit",
        none_flag="--no-val",
        none_help="no evaluation (a train+val model: nothing is held out)",
    ),
    "seed": Option("order of the feature batches"),
    "threads": Option("torch CPU threads (default: torch's choice)", parse=number(low=1)),
    "overwrite": Option("replace an existing --out"),
}


def add_parser(subparsers) -> None:
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_soup_parser(subparsers)
    add_fixres_parser(subparsers)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "train",
        TrainConfig,
        TRAIN_OPTIONS,
        run_train,
        help="fine-tune a backbone into a self-describing checkpoint (best.pt, last.pt)",
        description="Fine-tune a backbone on a prepared dataset. Writes best.pt (best by validation), last.pt "
        "(resumable), metrics.jsonl/.csv, curves.png, config.json and an evaluation report to --out "
        "(--recipe linear: best.pt, config.json, summary.json and the evaluation report).",
        epilog="examples:\n"
        "  floraedge train --data data/flowers --out runs/lite0                 # efficientnet_lite0, the default\n"
        "  floraedge train --data data/my-photos --recipe linear --out runs/my-linear   # minutes on a CPU\n"
        "  floraedge train --data data/flowers --arch efficientnet_lite0 --train-splits train,val --no-val "
        "--out runs/lite0-final\n"
        "  floraedge train --data data/flowers --arch resnet50 --weights resnet50-imagenet.pth --out runs/r50\n"
        "  floraedge train --data data/flowers --arch efficientnet_lite0 --teachers runs/r50/best.pt --out runs/lite0-kd\n"
        "  torchrun --nproc_per_node 2 -m train --data data/flowers --out runs/ddp   # data-parallel",
        own=console.VERBOSE_OWN,
    )
    return console.add_verbose_flag(parser)


@console.quiet_unless_verbose
def run_train(args: argparse.Namespace) -> int:
    from train.trainer import train

    summary = train(config_from_args(args))
    if summary:
        print(json.dumps(summary, indent=2))
        written = "summary.json" if args.recipe == "linear" else "last.pt, metrics.csv, curves.png"
        print(f"wrote {args.out}/best.pt, {written}")
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    return add_command(
        subparsers,
        "evaluate",
        EvaluateConfig,
        EVALUATE_OPTIONS,
        run_evaluate,
        help="top-1 / top-5 / mean per-class / confusion of a checkpoint (or an ensemble) on a split",
        epilog="examples:\n"
        "  floraedge evaluate --checkpoint runs/lite0/best.pt --data data/flowers --tta\n"
        "  floraedge evaluate --checkpoint runs/a/best.pt --ensemble runs/b/best.pt,runs/c/best.pt --data data/flowers"
        "   # a teacher candidate",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(config_from_args(args))
    keys = ("arch", "ensemble", "split", "tta_flip", "n", "top1", "top5", "mean_per_class")
    print(json.dumps({k: m[k] for k in keys}, indent=2))
    return 0


def add_soup_parser(subparsers) -> argparse.ArgumentParser:
    return add_command(
        subparsers,
        "soup",
        SoupConfig,
        SOUP_OPTIONS,
        run_soup,
        help="average the weights of several fine-tuned checkpoints into one model (a model soup)",
        description="Average the weights of runs fine-tuned from the same pretrained weights (other seeds, "
        "sizes or settings) into one checkpoint (Wortsman et al. 2022). Unlike `evaluate --ensemble` it costs "
        "nothing at inference: the soup evaluates, exports and runs like any checkpoint.",
        epilog="examples:\n"
        "  floraedge soup runs/s0/best.pt runs/s1/best.pt runs/s2/best.pt --out runs/soup/best.pt --data data/flowers\n"
        "  floraedge soup runs/*/best.pt --greedy --data data/flowers --out runs/greedy-soup/best.pt",
    )


def run_soup(args: argparse.Namespace) -> int:
    from train.soup import make_soup

    report = make_soup(config_from_args(args))
    print(json.dumps(report, indent=2))
    return 0


def add_fixres_parser(subparsers) -> argparse.ArgumentParser:
    return add_command(
        subparsers,
        "fixres",
        FixresConfig,
        FIXRES_OPTIONS,
        run_fixres,
        help="re-fit a checkpoint's classifier at a higher test resolution (FixRes)",
        description="Re-fit a trained checkpoint's classifier on its training images as the device sees them: "
        "resized and center-cropped at --img-size, and mirrored (Touvron et al. 2019). Training crops show "
        "objects larger than the test-time crop does, so a model trained at 224 px is best run at a higher "
        "resolution once its classifier is re-fitted there. The backbone and BatchNorm stay as they are, so "
        "each image's features are computed once (two forward passes) and the epochs cost next to nothing. "
        "Writes an ordinary checkpoint with the new input size: evaluate, export and run it like any other.",
        epilog="examples:\n"
        "  floraedge train --data data/flowers --arch efficientnet_lite0 --img-size 224 --out runs/lite0-224\n"
        "  floraedge fixres --checkpoint runs/lite0-224/best.pt --data data/flowers --img-size 256 "
        "--out runs/lite0-224/fixres256.pt\n"
        "  floraedge export --checkpoint runs/lite0-224/fixres256.pt --data data/flowers --out exports/fixres256",
    )


def run_fixres(args: argparse.Namespace) -> int:
    from train.fixres import refit

    print(json.dumps(refit(config_from_args(args)), indent=2))
    return 0
