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
        "inference_precision": row.get("inference_precision"),
        "file": row.get("file"),
        "size_mb": round(row["bytes"] / 1e6, 2) if row.get("bytes") else None,
        "top1": acc.get("top1"),
        "top5": acc.get("top5"),
        "mean_per_class": acc.get("mean_per_class"),
        "agreement": row.get("agreement"),
        "top1_drop_points": row.get("top1_drop_points"),
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
            f"iqr_ms_t{t}": lat.get("iqr_ms"),
            f"ratio_t{t}": lat.get("ratio"),
            f"ratio_iqr_t{t}": lat.get("ratio_iqr"),
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
    m, config = report["machine"], report["config"]
    head = (
        ["model", "backend", "MB", "top-1", "top-5", "mean/class", "agree", "drop pts"]
        + [h for t in threads for h in (f"ms @{t}T [IQR]", f"x ref @{t}T [IQR]")]
        + ["p99 ms", "loop FPS", "loop/model", "loop p99 ms", "model RSS MB"]
    )
    reference = next((r["reference"] for r in report["rows"] if r.get("reference")), "none")
    first = f"{report['rows'][0]['name']} ({report['rows'][0].get('backend')})" if report["rows"] else "none"
    lines = [
        "# FloraEdge benchmark",
        "",
        *conditions_lines(report.get("conditions")),
        f"{m['cpu']} ({m['machine']}, {m['cores']} cores), {m['os']}, Python {m['python']}; {m['date']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        f"Latency: batch 1, {config['rounds']} rounds x {config['runs']} runs per row and thread count, the rows "
        f"alternated (order rotated each round); ms = median of every run, [IQR] = interquartile range of the round "
        f"medians; x ref = the ratio to the reference row, {reference}, taken within each round (median [IQR] over "
        f"rounds): compare rows by it. Accuracy: one pass over the {config['split']} images of `{config['data']}`. "
        "Loop: end-to-end over a 640x480 MJPEG clip at the highest thread count; loop p99 = capture to result. "
        f"agree and drop pts: top-1 agreement with, and top-1 drop in points from, the first row, {first}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['name']} | {r['backend']} | {fmt(r['size_mb'], 2)} | FAILED: {r['error'][:150]} |")
            continue
        lat = [
            cell
            for t in threads
            for cell in (
                f"{fmt(r[f'median_ms_t{t}'], 2)} [{fmt(r[f'iqr_ms_t{t}'], 2)}]",
                f"{fmt(r[f'ratio_t{t}'], 3)} [{fmt(r[f'ratio_iqr_t{t}'], 3)}]",
            )
        ]
        cells = [
            r["name"],
            r["backend"] + (f" ({r['inference_precision']})" if r.get("inference_precision") else ""),
            fmt(r["size_mb"], 2),
            fmt(r["top1"]),
            fmt(r["top5"]),
            fmt(r["mean_per_class"]),
            fmt(r["agreement"]),
            fmt(r["top1_drop_points"], 2),
            *lat,
            fmt(r[f"p99_ms_t{threads[-1]}"], 2),
            fmt(r["loop_fps"], 1),
            fmt(r["loop_vs_model"], 2),
            fmt(r["loop_latency_p99_ms"], 1),
            fmt(r["model_rss_mb"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"![{p}]({p})" for p in plots], "", *conditions_table(report.get("conditions")), ""]
    return "\n".join(lines)


def conditions_lines(conditions: dict | None) -> list[str]:
    """The report's first word on trust: what changed during the run, or that nothing visible did."""
    if not conditions:
        return []
    if conditions["changed"]:
        return [
            "**Conditions changed during this run** (compare rows by their per-round ratio `x ref`, not their "
            "milliseconds, and re-run before quoting a figure):",
            "",
            *[f"- {line}" for line in conditions["changed"]],
            "",
        ]
    before, after = conditions["before"]["load_avg"][0], conditions["after"]["load_avg"][0]
    return [f"Conditions steady as far as this machine shows (1-min load {before:.2f} -> {after:.2f}).", ""]


def conditions_table(conditions: dict | None) -> list[str]:
    if not conditions:
        return []
    lines = ["## Conditions", "", "| | before | after |", "|---|---|---|"]
    before, after = conditions["before"], conditions["after"]
    lines.append(f"| load average (1, 5, 15 min) | {before['load_avg']} | {after['load_avg']} |")
    for cpu in sorted(before.get("cpu_freq", {}), key=lambda c: int(c[3:])):
        b, a = before["cpu_freq"][cpu], after.get("cpu_freq", {}).get(cpu, {})
        lines.append(
            f"| {cpu} MHz (max {b['max_mhz']}), governor | {b['mhz']}, {b['governor']} | "
            f"{a.get('mhz')}, {a.get('governor')} |"
        )
    for zone, celsius in before.get("temperature_c", {}).items():
        lines.append(f"| {zone} C | {celsius:.1f} | {after.get('temperature_c', {}).get(zone, float('nan')):.1f} |")
    if "throttled" in before or "throttled" in after:
        lines.append(f"| vcgencmd get_throttled | {before.get('throttled')} | {after.get('throttled')} |")
    missing = [k for k in ("cpu_freq", "temperature_c", "throttled") if k not in before]
    if missing:
        lines += ["", f"Not exposed on this machine: {', '.join(missing)}."]
    return lines


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
