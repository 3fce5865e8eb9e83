"""Model soups (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time"): one model whose weights are the mean of several
runs fine-tuned from the same pretrained weights (other seeds, sizes or settings).

Unlike an ensemble, a soup costs nothing at inference: it is one ordinary checkpoint that evaluates,
exports and runs like any other. The uniform soup averages every ingredient; the greedy soup takes
the ingredients in order of their own accuracy on a held-out split and keeps each one only if the
soup's accuracy there does not fall.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from edge_runtime.errors import FloraEdgeError
from edge_runtime.metadata import file_sha256
from train.checkpoint import library_versions, load_bundle, save_atomic
from train.config import EvaluateConfig, SoupConfig
from train.data import seen_in_training
from train.distill import check_classes
from train.evaluate import evaluate_bundle

SIZE_FIELDS = ("crop_size", "resize_size")  # weights of a CNN do not depend on the input size
BUNDLE_KEYS = ("format", "format_version", "arch", "num_classes", "class_names", "spec", "epoch", "dataset")


class SoupError(FloraEdgeError):
    """Checkpoints that cannot be averaged into one model, or a soup that cannot be chosen as asked."""


def load_ingredients(paths: tuple[str, ...]) -> list[dict]:
    """The bundles, checked to be averageable: one architecture, class list, preprocessing (but for the
    input size) and weight layout."""
    if len(paths) < 2:
        raise SoupError(f"a soup needs at least two checkpoints, got {len(paths)}")
    bundles = [load_bundle(p) for p in paths]
    for path, bundle in zip(paths[1:], bundles[1:], strict=True):
        check_compatible(path, bundle, paths[0], bundles[0])
    return bundles


def check_compatible(path: str, bundle: dict, first_path: str, first: dict) -> None:
    if bundle["arch"] != first["arch"]:
        raise SoupError(
            f"{path} is a {bundle['arch']} and {first_path} a {first['arch']}; "
            "a soup averages runs of one architecture fine-tuned from the same pretrained weights"
        )
    check_classes(path, list(bundle["class_names"]), list(first["class_names"]), role="soup ingredient")
    theirs, ours = (without_size(b["spec"]) for b in (bundle, first))
    if theirs != ours:
        differ = sorted(k for k in ours.keys() | theirs.keys() if theirs.get(k) != ours.get(k))
        raise SoupError(
            f"{path} prepares its input unlike {first_path} ({', '.join(differ)}); "
            "averaged weights would see one preprocessing, so use runs of one spec (sizes may differ)"
        )
    a, b = bundle["model"], first["model"]
    mismatched = [k for k in b if k not in a or a[k].shape != b[k].shape] + [k for k in a if k not in b]
    if mismatched:
        raise SoupError(f"{path} holds other weights than {first_path} (first difference: {mismatched[0]})")


def without_size(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in SIZE_FIELDS}


def average_weights(states: list[dict]) -> dict:
    """The element-wise mean of every floating-point tensor; counters (BatchNorm's num_batches_tracked)
    are taken from the first."""
    first = states[0]
    return {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
        for k, v in first.items()
    }


def with_weights(bundle: dict, weights: dict) -> dict:
    return bundle | {"model": weights}


def greedy_choice(bundles: list[dict], score) -> tuple[list[int], list[float]]:
    """Wortsman et al.'s greedy soup: the indices kept (in the order added) and each ingredient's own
    score; ``score(bundle)`` is the held-out accuracy."""
    alone = [score(b) for b in bundles]
    order = sorted(range(len(bundles)), key=lambda i: -alone[i])
    kept, best = [order[0]], alone[order[0]]
    base = bundles[order[0]]  # its spec (input size) is the soup's, as in soup_bundle
    for i in order[1:]:
        candidate = score(with_weights(base, average_weights([bundles[j]["model"] for j in [*kept, i]])))
        print(f"soup: + ingredient {i} -> {candidate:.4f} (best so far {best:.4f})", file=sys.stderr, flush=True)
        if candidate >= best:
            kept, best = [*kept, i], candidate
    return kept, alone


def make_soup(config: SoupConfig) -> dict:
    """Average ``config.checkpoints`` into one bundle at ``config.out``; returns its report."""
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise SoupError(f"{out} already exists; choose another --out or pass --overwrite")
    if config.greedy and config.data is None:
        raise SoupError("--greedy chooses ingredients by their accuracy on a held-out split: pass --data")
    bundles = load_ingredients(config.checkpoints)
    evaluation = held_out(config, bundles) if config.data is not None else None

    def score(bundle: dict) -> float | None:
        return evaluate_bundle(bundle, evaluation)["top1"] if evaluation else None

    if config.greedy:
        kept, alone = greedy_choice(bundles, score)
    else:
        kept, alone = list(range(len(bundles))), [score(b) for b in bundles]
    soup = soup_bundle(config, bundles, kept, alone)
    metrics = evaluate_bundle(soup, replace(evaluation, checkpoint=str(out))) if evaluation else None
    if metrics:
        soup["metrics"] = {config.split: metrics}  # under "val" (the usual split) export's model card shows it
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(soup, out, replace=config.overwrite)  # without --overwrite, never a file that appeared meanwhile
    return {"out": str(out), **soup["soup"], "top1": metrics["top1"] if metrics else None}


def held_out(config: SoupConfig, bundles: list[dict]) -> EvaluateConfig:
    """The evaluation that scores ingredients and soup; refused on a split any ingredient trained on."""
    for path, bundle in zip(config.checkpoints, bundles, strict=True):
        if seen := seen_in_training(bundle, config.data, config.split):
            raise SoupError(
                f"{path} was trained on {seen} of the {config.split!r} images, so its accuracy there says nothing; "
                "pass a held-out --split, or leave out --data for a uniform soup"
            )
    return EvaluateConfig(
        checkpoint=config.checkpoints[0],
        data=config.data,
        split=config.split,
        workers=config.workers,
        batch_size=config.batch_size,
    )


def pooled_dataset(records: list[dict]) -> dict:
    """The first record, training on what every one of them trained on (the soup has seen it all)."""
    pooled = records[0] | {"train_splits": sorted({s for r in records for s in r.get("train_splits", [])})}
    if all("trained_images" in r for r in records):
        pooled["trained_images"] = sorted({key for r in records for key in r["trained_images"]})
    else:
        pooled.pop("trained_images", None)  # unknown for one: fall back to the split names
    return pooled


def soup_bundle(config: SoupConfig, bundles: list[dict], kept: list[int], alone: list) -> dict:
    """The first kept ingredient's bundle (architecture, labels, spec; the best one for a greedy soup) with
    the averaged weights and a record of what went in."""
    first = {k: v for k, v in bundles[kept[0]].items() if k in BUNDLE_KEYS}  # not last.pt's optimizer and state
    ingredients = [
        {
            "path": path,
            "sha256": file_sha256(path),
            "epoch": bundle["epoch"],
            "crop_size": bundle["spec"]["crop_size"],
            f"{config.split}_top1": score,
            "kept": i in kept,
        }
        for i, (path, bundle, score) in enumerate(zip(config.checkpoints, bundles, alone, strict=True))
    ]
    return first | {
        "model": average_weights([bundles[i]["model"] for i in kept]),
        "metrics": {},
        "dataset": pooled_dataset([bundles[i].get("dataset", {}) for i in kept]),
        "config": asdict(config),
        "distillation": {},
        "versions": library_versions(),
        "soup": {
            "method": "greedy" if config.greedy else "uniform",
            "scored_on": config.split if config.data is not None else None,  # greedy: chosen there, so optimistic
            "ingredients": ingredients,
        },
    }
