"""``floraedge prepare``: options generated from ``PrepareConfig`` (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse
import dataclasses

from edge_runtime.cli import number
from edge_runtime.errors import FloraEdgeError
from edge_runtime.options import Option, add_command, config_from_args
from prepare.config import PrepareConfig
from prepare.layouts import LAYOUTS
from prepare.splits import SPLIT_MODES

PREPARE_OPTIONS = {
    "source": Option("your dataset: a folder of class folders, a split tree, a CSV, or the Oxford-102 release"),
    "layout": Option("how --source is laid out; auto recognizes it (see the layouts below)", choices=LAYOUTS),
    "name": Option("the dataset's name in the summary and what follows (default: the source folder's name)"),
    "download": Option("fetch the release (md5-checked, resumable) into --download-dir first"),
    "download_dir": Option("where --download keeps the raw files"),
    "mirror": Option("base URL to download from instead of the dataset's home page"),
    "out": Option("output folder for the prepared dataset"),
    "split": Option(
        "official: the source's own split (setid.mat, split folders, a CSV split column), stratified where it "
        "has none; stratified: a class-stratified random split",
        choices=SPLIT_MODES,
    ),
    "val_frac": Option("stratified: share of each class for val"),
    "test_frac": Option("stratified: share of each class for test"),
    "seed": Option("stratified: random seed"),
    "cache_size": Option("shorter side of the cached copies in px"),
    "workers": Option("processes (default: all cores, %(default)s)", parse=number(low=1)),
    "overwrite": Option("replace --out if it exists"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_command(
        subparsers,
        "prepare",
        PrepareConfig,
        PREPARE_OPTIONS,
        run,
        help="labelled photos (class folders, a CSV, the Oxford-102 release) -> split, validated, cached dataset",
        description=(
            "Read your labelled photos (class folders, a split tree or a CSV; or the raw Oxford-102 release), "
            "label every image, split it, check every image, and write a manifest, a summary, labels.txt, "
            "spec.json, an ImageFolder tree and a resized cache to --out."
        ),
        epilog=(
            "examples:\n"
            "  floraedge prepare --source ../shared/data/oxford102-trainval --out data/flowers\n"
            "  floraedge prepare --download --out data/flowers          # fetch the release first\n"
            "  floraedge prepare --source ~/photos/tomatoes --out data/tomatoes   # SOURCE/<class>/*.jpg\n"
            "  floraedge prepare --source DIR --out data/strat --split stratified --val-frac 0.1 --test-frac 0.2\n"
            + LAYOUTS_HELP
        ),
    )


LAYOUTS_HELP = """
layouts (--layout; auto recognizes them and refuses to guess between two):
  oxford102  the Oxford-102 release: imagelabels.mat, setid.mat, jpg/ or 102flowers.tgz; official splits
  folders    class folders SOURCE/<class>/**/<image>, split class-stratified (--val-frac/--test-frac/--seed);
             or a split tree SOURCE/<split>/<class>/**/<image>, split kept as given; split folders are
             train|training, val|valid|validation|dev, test|testing, any case
  csv        a CSV with a header path,label[,split]; paths relative to the CSV's folder, never outside it
  Class names are the folder names or CSV labels as written, in code-point order (Python's sorted(),
  like torchvision's ImageFolder): class i is line i+1 of labels.txt. Image files are read by suffix
  (.jpg .jpeg .png .bmp .webp .tif .tiff .gif .pnm ...); other and hidden files are counted and skipped.
  Every image is fully decoded; corrupt, duplicate and cross-split identical files are reported.
"""


def with_source(config: PrepareConfig) -> PrepareConfig:
    """The config with its release folder: ``--source`` as given, or where ``--download`` put the release."""
    if (config.source is None) == (not config.download):
        raise FloraEdgeError("give the release folder with --source DIR, or --download to fetch it (one of the two)")
    if not config.download:
        return config
    from prepare.download import BASE_URL, download_release

    source = download_release(config.download_dir, base_url=config.mirror or BASE_URL)
    return dataclasses.replace(config, source=source)


def run(args: argparse.Namespace) -> int:
    from prepare.build import prepare_dataset
    from prepare.report import print_summary

    config = with_source(config_from_args(args))
    print_summary(prepare_dataset(config), config.out)
    return 0
