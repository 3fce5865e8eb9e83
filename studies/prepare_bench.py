"""Feeds docs/training.md (`prepare` throughput).

`prepare` throughput: images/s with one process and with every core, on the same release.

python -m studies.prepare_bench --source ../shared/data/oxford102-trainval
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from prepare.build import PrepareConfig, prepare_dataset


def run(source: Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = prepare_dataset(PrepareConfig(source=source, out=Path(tmp) / "out", workers=workers))
        seconds = time.perf_counter() - start
    images = sum(summary["counts"].values())
    return {
        "workers": workers,
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True)
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    one, all_cores = run(args.source, 1), run(args.source, cores)
    print(
        json.dumps(
            {
                "one_process": one,
                "all_cores": all_cores,
                "speedup": round(all_cores["images_per_s"] / one["images_per_s"], 2),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
