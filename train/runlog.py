"""The run directory: its creation policy, the per-epoch log (JSONL + CSV), the curves and the JSON files."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

from edge_runtime.errors import FloraEdgeError
from edge_runtime.outdir import OutputError, check_output, claim, staged_output, write_marker
from train import distributed as dist
from train.config import TrainConfig

RUN = "train"  # the marker kind of a run directory


def run_inputs(config: TrainConfig) -> list:
    """What a run reads, which its folder may not overlap: the dataset, a weights file, the teachers."""
    weights = config.weights if Path(config.weights).is_file() else None
    return [config.data, weights, *config.teachers]


def check_run_dir(config: TrainConfig) -> bool:
    """Refuse a run directory that exists (without --resume or --overwrite) or overlaps an input; True: replace it."""
    out = Path(config.out)
    if config.resume:  # continues the run in place (runs from before the marker existed included)
        if not (out / "last.pt").is_file():
            raise FloraEdgeError(f"--resume: {out}/last.pt does not exist; start a new run without --resume")
        return False
    try:
        return check_output(out, RUN, overwrite=config.overwrite, inputs=run_inputs(config))
    except OutputError as exc:
        raise OutputError(f"{exc} (or --resume to continue a run)") from exc


def make_run_dir(config: TrainConfig, replace: bool, stack: contextlib.ExitStack) -> Path:
    """The folder this run writes to: ``--out`` itself (new, or resumed in place), or, when it replaces a
    previous run, a staging folder swapped in at ``--out`` when the run completes (entered on ``stack``):
    the previous run stays whole until then, and a failed or killed run leaves it as it was."""
    out = Path(config.out)
    if replace:
        stage = (
            stack.enter_context(staged_output(out, RUN, overwrite=True, inputs=run_inputs(config)))
            if dist.is_main()
            else None
        )
        return Path(dist.broadcast_object(str(stage) if stage else None))
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            write_marker(out, RUN)
        else:
            claim(out, RUN)  # two new runs started at once to one --out: the second stops here
    return out


def epoch_record(epoch: int, lrs: list[float], stats: dict, val: dict | None, seconds: float) -> dict:
    """One line of the log; ``lrs`` is the scheduler's last LRs (backbone, head)."""
    record = {
        "epoch": epoch,
        "lr_head": lrs[1],
        "lr_backbone": lrs[0],
        **{k: round(v, 5) for k, v in stats.items()},
        "epoch_s": round(seconds, 1),
    }
    if val is not None:
        record |= {f"val_{k}": round(val[k], 5) for k in ("top1", "top5", "mean_per_class")}
    return record


def log_epoch(out: Path, record: dict) -> None:
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    path = out / "metrics.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(record))
        if new:
            writer.writeheader()
        writer.writerow(record)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def plot_curves(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_log(out)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax_loss.set_xlabel("epoch"), ax_loss.legend()
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train top-1")
    if "val_top1" in history[0]:
        ax_acc.plot(epochs, [h["val_top1"] for h in history], label="val top-1")
        ax_acc.plot(epochs, [h["val_mean_per_class"] for h in history], label="val mean per-class", ls="--")
    ax_acc.set_xlabel("epoch"), ax_acc.set_ylim(0, 1), ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
