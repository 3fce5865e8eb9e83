"""``floraedge prepare``: command-line front end (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edge_runtime.cli import number
from prepare.splits import SPLIT_MODES

DEFAULT_DOWNLOAD_DIR = Path("data/oxford102-raw")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare",
        help="raw Oxford-102 release -> labelled, split, validated, cached dataset",
        description=(
            "Read a raw Oxford-102 release (102flowers.tgz or an extracted jpg/, imagelabels.mat, setid.mat), "
            "label every image with its official name, split it, check every JPEG, and write a manifest, "
            "a summary, labels.txt, spec.json, an ImageFolder tree and a resized cache to --out."
        ),
        epilog=(
            "examples:\n"
            "  floraedge prepare --source ../shared/data/oxford102-trainval --out data/flowers\n"
            "  floraedge prepare --download --out data/flowers          # fetch the release first\n"
            "  floraedge prepare --source DIR --out data/strat --split stratified --val-frac 0.1 --test-frac 0.2"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", type=Path, help="folder holding the release files")
    src.add_argument(
        "--download", action="store_true", help="fetch the release (md5-checked, resumable) into --download-dir first"
    )
    parser.add_argument(
        "--download-dir",
        type=Path,
        default=DEFAULT_DOWNLOAD_DIR,
        help="where --download keeps the raw files (default: %(default)s)",
    )
    parser.add_argument("--mirror", default=None, help="base URL to download from instead of the dataset's home page")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the prepared dataset")
    parser.add_argument(
        "--split",
        choices=SPLIT_MODES,
        default="official",
        help="official setid.mat splits, or a class-stratified random split (default: %(default)s)",
    )
    parser.add_argument(
        "--val-frac", type=float, default=0.1, help="stratified: share of each class for val (default: %(default)s)"
    )
    parser.add_argument(
        "--test-frac", type=float, default=0.1, help="stratified: share of each class for test (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="stratified: random seed (default: %(default)s)")
    parser.add_argument(
        "--cache-size", type=int, default=256, help="shorter side of the cached copies in px (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=number(low=1), default=os.cpu_count() or 1, help="processes (default: all cores, %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from prepare.build import PrepareConfig, prepare_dataset
    from prepare.report import print_summary

    source = args.source
    if args.download:
        from prepare.download import BASE_URL, download_release

        source = download_release(args.download_dir, base_url=args.mirror or BASE_URL)
    config = PrepareConfig(
        source=source,
        out=args.out,
        split=args.split,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        seed=args.seed,
        cache_size=args.cache_size,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    print_summary(prepare_dataset(config), args.out)
    return 0
