"""The device venv's size, whole and with one runtime: ``python -m tests.arm64.venv_size VENV`` (in that venv).

The edge install (``.[edge]``) has both runtimes; a device may install one (``.[edge-onnx]`` or
``.[edge-litert]``). Rather than a second and third install under emulation, the one-runtime sizes are the
whole venv less the files of the distributions only the other runtime pulls in (dependency closures from
the installed metadata). Prints one JSON object, sizes in MiB (as ``du -sm``).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import sys
from pathlib import Path

RUNTIMES = ("onnxruntime", "ai-edge-litert")
BASE = ("floraedge",)  # the project and its own dependencies (numpy, OpenCV)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots, dists: dict) -> set[str]:
    """Distributions installed because of ROOTS: their unconditional requirements, recursively."""
    seen, todo = set(), [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        for req in dists[name].requires or []:
            if "extra ==" not in req:
                todo.append(canonical(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def dist_bytes(dist) -> int:
    files = (Path(f.locate()) for f in dist.files or [])
    return sum(f.stat().st_size for f in files if f.is_file())


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main(venv: str) -> None:
    dists = {canonical(d.metadata["Name"]): d for d in md.distributions() if d.metadata["Name"]}
    edge = closure(BASE + RUNTIMES, dists)
    total = tree_bytes(Path(venv))
    sizes = {"edge": total}
    for keep in RUNTIMES:
        other = closure([r for r in RUNTIMES if r != keep], dists) - closure(BASE + (keep,), dists)
        sizes[f"edge-only-{keep}"] = total - sum(dist_bytes(dists[n]) for n in other)
    mb = {k: round(v / 2**20) for k, v in sizes.items()}
    mb["distributions"] = sorted(edge)
    print(json.dumps(mb))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ["VIRTUAL_ENV"])
