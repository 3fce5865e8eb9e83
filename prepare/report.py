"""A short human-readable account of a prepared dataset."""

from __future__ import annotations

from pathlib import Path


def print_summary(summary: dict, out: Path) -> None:
    print(f"dataset: {summary['dataset']}")
    for split, n in summary["counts"].items():
        missing = summary["missing"].get(split, 0)
        note = f", {missing} missing from the release" if missing else ""
        print(f"  {split:5s} {n:6d} images in {summary['classes_present'][split]:3d} classes{note}")
    if summary["partial_release"]:
        print("  partial release: missing images are listed in missing.json; work went on without them")
    if summary.get("labelled_in_no_split"):
        print(
            f"  {summary['labelled_in_no_split']} labelled images are in no split (e.g. ids "
            f"{summary['labelled_in_no_split_first']}); they are left out"
        )
    for item in summary["corrupt"]:
        print(f"  skipped corrupt image {item['file']}: {item['error']}")
    if summary["duplicates"]:
        print(f"  {len(summary['duplicates'])} groups of byte-identical images (see summary.json)")
    print(f"  {summary['images_per_s']} images/s, {summary['elapsed_s']} s")
    print(
        f"wrote {out}/ (manifest.csv, summary.json, labels.txt, spec.json, cache/, {', '.join(s + '/' for s in summary['counts'] if summary['counts'][s])})"
    )
