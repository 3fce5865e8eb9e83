"""The benchmark report: Markdown (with the plots embedded), CSV and JSON, and two PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def flat(row: dict, threads: list[int]) -> dict:
    acc = row.get("accuracy", {})
    out = {
        "name": row["name"],
        "backend": row.get("backend"),
        "file": row.get("file"),
        "size_mb": round(row["bytes"] / 1e6, 2) if row.get("bytes") else None,
        "top1": acc.get("top1"),
        "top5": acc.get("top5"),
        "mean_per_class": acc.get("mean_per_class"),
        "agreement": row.get("agreement"),
        "load_ms": row.get("load_ms"),
        "model_rss_mb": row.get("model_rss_mb"),
        "peak_rss_mb": row.get("peak_rss_mb"),
    }
    for t in threads:
        lat = row.get("latency", {}).get(str(t), {})
        out |= {
            f"median_ms_t{t}": lat.get("median_ms"),
            f"p90_ms_t{t}": lat.get("p90_ms"),
            f"p99_ms_t{t}": lat.get("p99_ms"),
            f"ips_t{t}": lat.get("throughput_ips"),
        }
    loop = row.get("loop", {})
    out |= {
        "loop_fps": loop.get("fps"),
        "loop_vs_model": loop.get("ratio"),
        "loop_latency_p99_ms": loop.get("latency_p99_ms"),
        "error": row.get("error", ""),
    }
    return out


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_report(out: Path, report: dict) -> None:
    threads = report["machine"]["threads"]
    rows = [flat(r, threads) for r in report["rows"]]
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots = write_plots(out, report, threads)
    (out / "report.md").write_text(markdown(report, rows, threads, plots))


def markdown(report: dict, rows: list[dict], threads: list[int], plots: list[str]) -> str:
    m = report["machine"]
    head = (
        ["model", "backend", "MB", "top-1", "top-5", "mean/class", "agree"]
        + [f"ms @{t}T" for t in threads]
        + ["p99 ms", "loop FPS", "loop/model", "loop p99 ms", "model RSS MB"]
    )
    lines = [
        "# FloraEdge benchmark",
        "",
        f"{m['cpu']} ({m['machine']}, {m['cores']} cores), {m['os']}, Python {m['python']}; {m['date']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        f"Latency: batch 1, median of {report['config']['runs']} runs after {report['config']['warmup']} "
        f"warm-up; accuracy on {report['config']['split']} images of `{report['config']['data']}`. "
        "Loop: end-to-end over a 640x480 MJPEG clip at the highest thread count; loop p99 = capture to result.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['name']} | {r['backend']} | {fmt(r['size_mb'], 2)} | FAILED: {r['error'][:150]} |")
            continue
        lat = [fmt(r[f"median_ms_t{t}"], 2) for t in threads]
        cells = [
            r["name"],
            r["backend"],
            fmt(r["size_mb"], 2),
            fmt(r["top1"]),
            fmt(r["top5"]),
            fmt(r["mean_per_class"]),
            fmt(r["agreement"]),
            *lat,
            fmt(r[f"p99_ms_t{threads[-1]}"], 2),
            fmt(r["loop_fps"], 1),
            fmt(r["loop_vs_model"], 2),
            fmt(r["loop_latency_p99_ms"], 1),
            fmt(r["model_rss_mb"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def write_plots(out: Path, report: dict, threads: list[int]) -> list[str]:
    try:
        import matplotlib
    except ImportError:  # a lean device environment: the tables are the report, the plots are extra
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    good = [r for r in report["rows"] if "error" not in r and r.get("latency")]
    if not good:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    t = str(threads[-1])
    markers = "osD^vP*Xh<>"
    for i, r in enumerate(good):
        size = max(20, (r.get("bytes") or 1e6) / 1e5)
        ax.scatter(
            r["latency"][t]["median_ms"],
            r["accuracy"]["top1"],
            s=size,
            alpha=0.7,
            marker=markers[i % len(markers)],
            label=f"{r['name']} ({r['backend']}, {(r.get('bytes') or 0) / 1e6:.1f} MB)",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"median latency, batch 1, {t} threads (ms, log scale)")
    ax.set_ylabel("top-1")
    ax.set_title("accuracy vs latency (marker area ~ file size)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(threads)
    for i, th in enumerate(threads):
        ax.bar(
            [j + i * width for j in range(len(good))],
            [r["latency"][str(th)]["median_ms"] for r in good],
            width,
            label=f"{th} thread{'s' if th > 1 else ''}",
        )
    ax.set_xticks([j + width * (len(threads) - 1) / 2 for j in range(len(good))])
    ax.set_xticklabels([f"{r['name']}\n{r['backend']}" for r in good], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("median ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_by_threads.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_latency.png", "latency_by_threads.png"]
