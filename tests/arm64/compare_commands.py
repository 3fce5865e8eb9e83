"""After `device.sh commands`: the arm64 CLI's answers against x86's, on the host.

    python tests/arm64/compare_commands.py WORK

`floraedge classify` top-1 per image, `floraedge bench` accuracy columns per row and the image `floraedge
serve` classified must equal what the same commands said on x86. The arm64 bench report is marked as
emulated: its latencies are qemu's, never a device's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ACCURACY_COLUMNS = ("top1", "top5", "mean_per_class")
# Rows whose file runs other integer kernels on arm64 than on x86 (ONNX Runtime's aarch64 requantization
# rounds otherwise: about one quantization step, bounded per photo by agreement.py). On the test model,
# whose scores on the synthetic bench images are near-uniform, that flips a near-tie now and then, so
# their columns may differ by one image; every other row must match exactly.
ONE_IMAGE_ROWS = {"onnx-int8"}
EMULATED = (
    "EMULATED: arm64 code run by qemu-user on an x86 host. The accuracy columns are the device's; "
    "the latency, throughput, FPS and memory columns are NOT device numbers and must not be published."
)


def top1_by_image(path: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {Path(r["image"]).name: r["top"][0]["label"] for r in lines}


def bench_accuracy(folder: Path) -> dict[tuple[str, str], dict]:
    rows = json.loads((folder / "results.json").read_text())["rows"]
    return {
        (r["name"], r.get("backend")): {c: r.get("accuracy", {}).get(c) for c in ACCURACY_COLUMNS}
        | {"agreement": r.get("agreement"), "error": r.get("error"), "n": r.get("accuracy", {}).get("n")}
        for r in rows
    }


def same_bench_row(name: str, x86: dict, arm: dict | None) -> bool:
    if arm is None or x86["error"] or arm["error"] or name not in ONE_IMAGE_ROWS:
        return arm == x86 and not x86["error"]
    # mean_per_class follows top1: one image moves it by 1 / (classes x that class's images), not 1 / n
    columns = ("top1", "top5", "agreement")
    return arm["n"] == x86["n"] and all(abs(arm[c] - x86[c]) * x86["n"] <= 1 + 1e-9 for c in columns)


def mark_emulated(folder: Path) -> None:
    report = folder / "report.md"
    report.write_text(f"> **{EMULATED}**\n\n" + report.read_text())
    results = json.loads((folder / "results.json").read_text())
    results["machine"]["emulated"] = EMULATED
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def main(work: Path) -> int:
    problems = []
    x86, arm = top1_by_image(work / "classify-x86.json"), top1_by_image(work / "classify-arm64.json")
    if x86 != arm or not x86:
        problems.append(f"classify: top-1 differs on {sorted(k for k in x86 if x86[k] != arm.get(k))[:5]}")
    served = json.loads((work / "serve-arm64.json").read_text())
    if served["top"][0]["label"] != x86[served["image"]]:
        problems.append(f"serve said {served['top'][0]['label']!r}, x86 classify {x86[served['image']]!r}")
    bench_x86, bench_arm = bench_accuracy(work / "bench-x86"), bench_accuracy(work / "bench-arm64-emulated")
    for key, columns in bench_x86.items():
        if not same_bench_row(key[0], columns, bench_arm.get(key)):
            problems.append(f"bench row {key}: x86 {columns}, arm64 {bench_arm.get(key)}")
    mark_emulated(work / "bench-arm64-emulated")
    for p in problems:
        print(f"FAIL {p}")
    print(
        f"commands: classify {len(arm)} images, serve 1 request, bench {len(bench_arm)} rows: "
        + ("same answers as x86" if not problems else f"{len(problems)} differences")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
