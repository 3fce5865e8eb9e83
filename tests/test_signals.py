"""Long-running commands under SIGINT (Ctrl-C) and SIGTERM (systemd, docker stop, a supervisor).

For each: the process exits promptly (no thread or child left holding it), leaves nothing
half-written (no temporary folder, no truncated cache or recording) and prints no traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, default_sigint
from tests.test_bench_edge import fake_prepared
from tests.tiny_models import tiny_onnx

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
PROMPT_S = 15


class Command:
    """``floraedge ARGS`` in its own process, its output collected by a thread as it comes."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "floraedge", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,  # its own process group: a failed test kills every child too
            preexec_fn=default_sigint,
        )
        self.output = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := self.proc.stdout.read1(4096):
            self.output += chunk

    def wait_for(self, text: bytes, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"never printed {text!r}: {bytes(self.output[-3000:])!r}")
            time.sleep(0.05)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def descendants(self) -> set[int]:
        found, todo = set(), [self.proc.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                children = (task / "children").read_text().split() if (task / "children").exists() else []
                for child in map(int, children):
                    if child not in found:
                        found.add(child)
                        todo.append(child)
        return found

    def interrupt(self, sig: int) -> tuple[int, float, str]:
        """Send ``sig``; (exit code, seconds to exit, output). Fails if it does not exit promptly."""
        children = self.descendants()
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=PROMPT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {PROMPT_S} s after {signal.Signals(sig).name}") from None
        elapsed = time.monotonic() - start
        self.reader.join(timeout=5)
        time.sleep(0.5)
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
        assert not alive, f"child processes left running: {alive}"
        return code, elapsed, self.output.decode(errors="replace")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
    except (OSError, IndexError):
        return "Z"


EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_run_stops_cleanly_and_its_recording_is_complete(tmp_path, sig):
    model = tiny_onnx(tmp_path / "model.onnx")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2000):
        cv2.imwrite(str(frames / f"{i:05d}.png"), np.full((48, 64, 3), i % 255, np.uint8))
    record = tmp_path / "out.mp4"
    cmd = Command("run", "--model", str(model), "--source", str(frames), "--headless", "--record", str(record))
    cmd.wait_for(b'"frame": 5,')
    code, _, output = cmd.interrupt(sig)
    assert code == 0 and '"summary"' in output and "Traceback" not in output, output[-2000:]
    capture = cv2.VideoCapture(str(record))
    assert capture.isOpened() and capture.read()[0]  # closed properly: a playable file
    capture.release()


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_serve_stops_promptly_even_with_a_client_mid_upload(tmp_path, sig):
    import socket

    from tests.serve_clients import SlowBodies, free_port

    model, port = tiny_onnx(tmp_path / "model.onnx"), free_port()
    cmd = Command("serve", "--model", str(model), "--port", str(port))
    cmd.wait_for(b"Uvicorn running")
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(SlowBodies.HEAD + b"\xff\xd8")
    code, elapsed, output = cmd.interrupt(sig)
    slow.close()
    assert code in (0, EXIT[sig]) and "Traceback" not in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_bench_stops_its_measuring_process_and_leaves_no_partial_cache(tmp_path, sig):
    data = fake_prepared(tmp_path / "prepared")
    models = tmp_path / "exports"
    models.mkdir()
    tiny_onnx(models / "model_fp32.onnx")
    out = tmp_path / "bench"
    cmd = Command(
        "bench", "--models", str(models), "--data", str(data), "--out", str(out), "--runs", "1000000", "--threads", "1"
    )
    cmd.wait_for(b"== onnx-fp32")
    time.sleep(1.0)  # the measuring process is running
    code, _, output = cmd.interrupt(sig)
    assert code == EXIT[sig] and "Traceback" not in output, output[-3000:]
    assert not out.exists()  # built aside: an interrupted bench publishes nothing
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # and leaves no staging folder


@pytest.mark.slow
@pytest.mark.torch  # prepare needs scipy and Pillow: the training environment
@pytest.mark.parametrize("sig", SIGNALS)
def test_prepare_removes_its_temporary_folder(tmp_path, sig):
    from prepare.synthetic import make_synthetic_release

    release = make_synthetic_release(
        tmp_path / "release", num_classes=102, train_per_class=6, val_per_class=2, test_per_class=2, size=192
    )
    out = tmp_path / "prepared"
    cmd = Command("prepare", "--source", str(release), "--out", str(out), "--workers", "2")
    cmd.wait_for(b"checking + caching images")
    code, _, output = cmd.interrupt(sig)
    assert code == EXIT[sig] and "Traceback" not in output, output[-3000:]
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden temporary folder


def _dataset_state(out: Path) -> tuple[bytes, bytes] | None:
    """(manifest, marker) of a complete prepared dataset at ``out``; None when there is none."""
    if not out.exists():
        return None
    return (out / "manifest.csv").read_bytes(), (out / ".floraedge-output.json").read_bytes()


@pytest.mark.slow
@pytest.mark.torch  # prepare needs scipy and Pillow: the training environment
def test_prepare_killed_at_random_moments_keeps_the_previous_dataset_whole(tmp_path):
    """SIGKILL (no handler runs) at random moments of `prepare --overwrite`: --out is always the previous
    complete dataset or the new complete one, and the next run removes what the killed ones left."""
    import random

    from prepare.synthetic import make_synthetic_release

    release = make_synthetic_release(
        tmp_path / "release", num_classes=102, train_per_class=4, val_per_class=2, test_per_class=2, size=160
    )
    out = tmp_path / "prepared"
    args = ("prepare", "--source", str(release), "--out", str(out), "--workers", "2", "--overwrite")
    first = Command(*args)
    assert first.proc.wait(timeout=300) == 0, bytes(first.output[-2000:])
    complete = _dataset_state(out)
    rng = random.Random(0)
    for _ in range(4):
        cmd = Command(*args)
        cmd.wait_for(b"checking + caching images")
        time.sleep(rng.uniform(0, 3))
        cmd.kill()
        assert _dataset_state(out) == complete  # the same release: old and new datasets are equal
    last = Command(*args)
    assert last.proc.wait(timeout=300) == 0, bytes(last.output[-2000:])
    last.reader.join(timeout=5)
    assert _dataset_state(out) == complete
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # killed runs' folders removed


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_two_prepare_runs_to_one_out_at_once_never_both_succeed(tmp_path, overwrite):
    from prepare.synthetic import make_synthetic_release

    release = make_synthetic_release(
        tmp_path / "release", num_classes=102, train_per_class=4, val_per_class=2, test_per_class=2, size=160
    )
    out = tmp_path / "prepared"
    args = ["prepare", "--source", str(release), "--out", str(out), "--workers", "1"] + ["--overwrite"] * overwrite
    runs = [Command(*args), Command(*args)]
    for run in runs:
        run.wait_for(b"checking + caching images")  # both are building before either publishes
    codes = sorted(run.proc.wait(timeout=300) for run in runs)
    loser = next(run for run in runs if run.proc.returncode)
    loser.reader.join(timeout=5)
    text = loser.output.decode(errors="replace")
    assert codes == [0, 1] and "appeared or changed while this run" in text and "Traceback" not in text, text
    assert _dataset_state(out) is not None
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
