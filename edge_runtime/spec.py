"""The preprocessing spec: the one description of how an image becomes a model input.

It lives in the torch-free edge runtime so that every stage (prepare, train, export, the
camera loop, the benchmarks) can import it. It travels as JSON inside every artifact
(checkpoint, ONNX ``metadata_props``, TFLite metadata) and is read back from there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from edge_runtime.errors import FloraEdgeError

SPEC_VERSION = 1
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
COLOR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")


class SpecError(FloraEdgeError, ValueError):
    """A preprocessing spec that is missing, malformed or inconsistent."""


@dataclass(frozen=True, kw_only=True)
class PreprocessSpec:
    """How to turn a decoded image into a model input.

    The image is resized so that its shorter side is ``resize_size`` (antialiased when
    shrinking), centre-cropped to ``crop_size`` x ``crop_size``, put in ``color_order``,
    scaled to [0, 1] and normalized as ``(x - mean) / std`` per channel, then laid out
    as ``layout`` with a batch axis in front.
    """

    crop_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"
    layout: str = "NCHW"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = self._problems()
        if problems:
            raise SpecError("invalid preprocessing spec: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if not 0 < self.crop_size <= self.resize_size:
            problems.append(f"need 0 < crop_size <= resize_size, got {self.crop_size} and {self.resize_size}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if self.color_order not in COLOR_ORDERS:
            problems.append(f"color_order {self.color_order!r} is not one of {COLOR_ORDERS}")
        if self.layout not in LAYOUTS:
            problems.append(f"layout {self.layout!r} is not one of {LAYOUTS}")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean and std need exactly 3 values (one per channel)")
        if any(s <= 0 for s in self.std):
            problems.append(f"std values must be positive, got {self.std}")
        if self.version != SPEC_VERSION:
            problems.append(f"spec version {self.version} is not supported (this runtime reads {SPEC_VERSION})")
        return problems

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The model input shape for a batch of one."""
        c, s = 3, self.crop_size
        return (1, c, s, s) if self.layout == "NCHW" else (1, s, s, c)

    def at_size(self, crop_size: int) -> PreprocessSpec:
        """This spec at another input size, keeping the standard crop fraction (resize = crop / 0.875)."""
        return self.replace(crop_size=crop_size, resize_size=round(crop_size / CROP_FRACTION))

    def replace(self, **changes) -> PreprocessSpec:
        """A copy with some fields changed (validated like a new spec)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        if not isinstance(data, dict):
            raise SpecError(f"a preprocessing spec is a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown preprocessing spec fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"preprocessing spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


CROP_FRACTION = 0.875  # the centre crop keeps 87.5% of the resized shorter side (224 of 256)
IMAGENET_SPEC = PreprocessSpec()
# EfficientNet-Lite scales its input as (x - 127.5) / 127.5.
INCEPTION_SPEC = PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
