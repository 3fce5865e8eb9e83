"""Datasets read from a prepared directory's resized cache.

Training augments uint8 tensors with torchvision; evaluation calls the edge runtime's
``preprocess()`` so that the numbers measured here are the numbers a device gets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from edge_runtime.bounded import read_text_bounded
from edge_runtime.errors import FloraEdgeError
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.spec import PreprocessSpec
from prepare.manifest import read_manifest
from prepare.oxford102 import SPLITS
from train import distributed as dist
from train.config import TrainConfig


def select_rows(prepared: Path, splits: list[str]) -> list[dict]:
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise FloraEdgeError(f"unknown split(s) {unknown}; choose from {', '.join(SPLITS)}")
    rows = [r for r in read_manifest(prepared) if r["split"] in splits]
    if not rows:
        raise FloraEdgeError(f"{prepared} has no images in split(s) {', '.join(splits)} (see its summary.json)")
    return rows


def train_transform(spec: PreprocessSpec, *, min_scale: float = 0.35, trivial_augment: bool = True) -> v2.Compose:
    steps = [v2.RandomResizedCrop(spec.crop_size, scale=(min_scale, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if trivial_augment:
        steps.append(v2.TrivialAugmentWide())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    return v2.Compose(steps)


class CachedImages(Dataset):
    """Images of a prepared dataset's cache as uint8: decoded once and kept in memory (training reads
    them every epoch), or with ``in_memory=False`` read at each access (a single pass, such as
    ``evaluate``: memory then does not grow with the split)."""

    def __init__(
        self,
        prepared: str | Path,
        splits: list[str],
        transform=None,
        spec: PreprocessSpec | None = None,
        *,
        in_memory: bool = True,
    ):
        self.root = Path(prepared)
        self.rows = select_rows(self.root, splits)
        self.targets = [r["class_index"] for r in self.rows]
        self.transform, self.spec = transform, spec
        self.images = [read_image_bgr(self.root / r["cache_path"]) for r in self.rows] if in_memory else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        bgr = self.images[i] if self.images is not None else read_image_bgr(self.root / self.rows[i]["cache_path"])
        if self.transform is None:  # evaluation: the runtime's own preprocessing
            return torch.from_numpy(preprocess(bgr, self.spec.replace(layout="NCHW"))[0]), self.targets[i]
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
        return self.transform(rgb), self.targets[i]


class JpegFolderImages(Dataset):
    """The plain baseline: decode the original JPEG every time (for the input-pipeline benchmark)."""

    def __init__(self, prepared: str | Path, splits: list[str], transform):
        self.root, self.rows, self.transform = Path(prepared), select_rows(Path(prepared), splits), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rgb = cv2.cvtColor(read_image_bgr(self.root / self.rows[i]["path"]), cv2.COLOR_BGR2RGB)
        return self.transform(torch.from_numpy(rgb).permute(2, 0, 1)), self.rows[i]["class_index"]


def read_summary(data: Path) -> dict:
    """The prepared dataset's summary.json; a missing or malformed dataset is a one-line error."""
    if not (data / "manifest.csv").is_file() or not (data / "summary.json").is_file():
        raise FloraEdgeError(
            f"--data {data} is not a prepared dataset (no manifest.csv or summary.json); "
            f"run `floraedge prepare --out {data}` first"
        )
    read_manifest(data)  # a malformed one is a one-line error here, before anything is loaded
    try:
        summary = json.loads(read_text_bounded(data / "summary.json", what="dataset summary"))
        int(summary["config"]["cache_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FloraEdgeError(
            f"{data}/summary.json is malformed ({exc!r}); re-create it with `floraedge prepare`"
        ) from exc
    return summary


def dataset_classes(data: str | Path) -> list[str]:
    """The prepared dataset's class names, index order: its labels.txt, else (older or hand-made folders) the
    manifest's class_name of each class_index."""
    data = Path(data)
    labels = data / "labels.txt"
    if labels.is_file():
        names = [line for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        by_index = {r["class_index"]: r["class_name"] for r in read_manifest(data)}
        names = [by_index.get(i, f"class_{i}") for i in range(max(by_index, default=-1) + 1)]
    if len(names) < 2:
        raise FloraEdgeError(f"{data} holds {len(names)} class(es); a classifier needs at least 2")
    return names


def check_labels(images: CachedImages, class_names: list[str]) -> None:
    """Every manifest label is one of the dataset's classes (a hand-edited manifest is refused here, not mid-epoch)."""
    outside = sorted({t for t in images.targets if not 0 <= t < len(class_names)})
    if outside:
        raise FloraEdgeError(
            f"the manifest has class indices {outside[:5]} but labels.txt lists {len(class_names)} classes; "
            "re-create the dataset with `floraedge prepare`"
        )


def warn_if_cache_too_small(data: Path, spec: PreprocessSpec) -> None:
    cache_size = read_summary(data)["config"]["cache_size"]
    if spec.resize_size > cache_size:
        print(
            f"warning: the model resizes to {spec.resize_size} px but the cache holds {cache_size} px; "
            f"re-run prepare with --cache-size {spec.resize_size} for full detail",
            file=sys.stderr,
        )


def training_sets(config: TrainConfig, spec: PreprocessSpec) -> tuple[CachedImages, CachedImages | None]:
    """The augmented training images and the validation images (None without a val split), decoded once."""
    data = Path(config.data)
    warn_if_cache_too_small(data, spec)
    transform = train_transform(spec, min_scale=config.min_scale, trivial_augment=config.trivial_augment)
    train_set = CachedImages(data, list(config.train_splits), transform=transform)
    val_set = CachedImages(data, [config.val_split], spec=spec) if config.val_split else None
    return train_set, val_set


def image_key(row: dict) -> str:
    """An image's identity, whatever its name or split: the head of its sha256 (from the manifest)."""
    return row["sha256"][:16]


def dataset_info(config: TrainConfig, train_set: CachedImages) -> dict:
    """What the checkpoint records about its training data, down to which images it trained on."""
    summary = read_summary(Path(config.data))
    return {
        "name": summary["dataset"],
        "synthetic": summary["synthetic"],
        "source": summary["source"],
        "train_splits": list(config.train_splits),
        "val_split": config.val_split,
        "trained_images": sorted(image_key(r) for r in train_set.rows),
    }


def seen_in_training(bundle: dict, data: str | Path, split: str) -> int:
    """How many images of ``split`` in ``data`` the bundle was trained on: by content when it lists its
    training images (whatever the split is called there), by split name for bundles that do not."""
    rows = select_rows(Path(data), [split])
    dataset = bundle.get("dataset", {})
    if "trained_images" in dataset:
        trained = set(dataset["trained_images"])
        return sum(image_key(r) in trained for r in rows)
    return len(rows) if split in dataset.get("train_splits", []) else 0


def epoch_loader(dataset: Dataset, config: TrainConfig, epoch: int) -> DataLoader:
    """A loader whose order (and its workers' augmentation) depend only on (seed, epoch): a resumed run repeats them.

    Its own generator: torch's global RNG is left alone (the loop seeds a scoped copy of it for the
    augmentation that runs in this process, see ``engine.seeded``).
    """
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    sampler = None
    if dist.world_size() > 1:
        sampler = DistributedSampler(dataset, seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=config.batch_size // dist.world_size(),
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        num_workers=config.workers,
        generator=generator,
        persistent_workers=False,
    )


def eval_loader(dataset: Dataset, workers: int, batch_size: int = 64) -> DataLoader:
    # Its own generator: without one, every pass over a DataLoader draws its workers' seed from
    # torch's global RNG (evaluation itself is not random).
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, generator=torch.Generator())
