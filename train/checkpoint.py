"""The model bundle: a checkpoint that describes itself (the contract for export and benchmarks).

Everything in it is a tensor, a number, a string, a list or a dict, so it loads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn

from edge_runtime.atomic import atomic_path
from edge_runtime.errors import FloraEdgeError
from edge_runtime.spec import PreprocessSpec

FORMAT = "floraedge-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(FloraEdgeError):
    """A checkpoint file that is missing, corrupt, or not a FloraEdge model bundle."""


def library_versions() -> dict[str, str]:
    import torchvision

    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def make_bundle(
    model: nn.Module,
    *,
    arch: str,
    class_names: list[str],
    spec: PreprocessSpec,
    config: dict,
    metrics: dict,
    epoch: int,
    dataset: dict | None = None,
    distillation: dict | None = None,
) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "spec": spec.to_dict(),
        "config": config,
        "metrics": metrics,
        "epoch": epoch,
        "dataset": dataset or {},
        "distillation": distillation or {},  # teachers (path, sha256), weight, temperature; {} when none
        "versions": library_versions(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def dataset_record(bundle: dict) -> dict:
    """The bundle's dataset record for cards and file metadata: the training images as a count."""
    dataset = dict(bundle.get("dataset", {}))
    if "trained_images" in dataset:
        dataset["trained_images"] = len(dataset["trained_images"])
    return dataset


def save_atomic(obj: dict, path: Path, *, replace: bool = True) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file.
    ``replace=False``: a file that appeared at ``path`` during the run is refused, not replaced."""
    with atomic_path(path, replace=replace) as tmp:
        torch.save(obj, tmp)


def load_bundle(path: str | Path) -> dict:
    """Read and check a model bundle (weights_only: a checkpoint cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `floraedge train`")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a FloraEdge model bundle (a plain state_dict? use --weights for those)")
    if bundle.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has bundle version {bundle.get('format_version')}; expected {FORMAT_VERSION}")
    return bundle


def model_from_bundle(bundle: dict) -> tuple[nn.Module, PreprocessSpec]:
    """The trained model (eval mode) and its preprocessing spec."""
    from train.models import build_model

    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG alone
        model = build_model(bundle["arch"], bundle["num_classes"], weights="none")
    model.load_state_dict(bundle["model"])
    return model.eval(), PreprocessSpec.from_dict(bundle["spec"])


def retarget(checkpoint: Path, img_size: int, out: Path) -> None:
    """A copy of ``checkpoint`` whose spec asks for another input size: the same weights, evaluated (and exported)
    at another test-time resolution."""
    from train.models import input_spec

    bundle = load_bundle(checkpoint)
    bundle["spec"] = input_spec(bundle["arch"], img_size).to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(bundle, out)
