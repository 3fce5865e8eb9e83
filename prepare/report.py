"""A short human-readable account of a prepared dataset."""

from __future__ import annotations

from pathlib import Path


def print_summary(summary: dict, out: Path) -> None:
    print(f"dataset: {summary['dataset']}")
    if "split_from" in summary:  # a labelled source (prepare/labelled.py): what was read, and what it lacks
        print_labelled(summary)
    elif "layout" in summary:
        print(f"  layout read: {summary['layout']}; split {summary['config']['split']}")
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


def print_labelled(summary: dict) -> None:
    """The layout read, the classes, and every skip and warning of a labelled source (long lists cut short)."""
    print(f"  layout read: {summary['layout']}; split {summary['split_from']}; {summary['num_classes']} classes")
    for reason, n in summary["skipped"].items():
        print(f"  skipped {n} files ({reason}), e.g. {', '.join(summary['skipped_examples'][reason][:2])}")
    if summary["missing_files"]:
        print(f"  {summary['missing_files']} files named in the CSV do not exist (see summary.json)")
    if summary["duplicate_rows"]:
        print(f"  {summary['duplicate_rows']} CSV rows repeat an earlier row and were read once")
    for what, key in (
        ("empty class folders", "empty_classes"),
        ("classes without a readable image", "dropped_classes"),
    ):
        if summary[key]:
            print(f"  {len(summary[key])} {what} left out: {', '.join(summary[key][:5])}")
    for line in summary["class_warnings"]:
        print(f"  warning: {line}")
    if summary["leakage"]:
        first = summary["leakage"][0]["sources"]
        print(f"  warning: {len(summary['leakage'])} images are byte-identical across splits (leakage), e.g. {first}")
