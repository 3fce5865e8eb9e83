"""`floraedge bench` on a machine whose speed changes mid-run: alternating rounds keep the rows' ratio,
the conditions are read and compared, and the evaluation images are streamed (memory flat in the split)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from benchmarks.bench import InProcess, latency_rounds, latency_summary
from benchmarks.conditions import changes, drift, read_conditions, throttled
from prepare.manifest import write_manifest
from tests.conftest import REPO
from tests.tiny_models import tiny_onnx


class SharedMachine:
    """A modelled CPU that a busy job starts to share halfway through a benchmark, on its own clock.

    Each ``work(ms)`` call costs ``ms`` times the current slowdown on the machine's clock. Once
    ``trigger_after`` calls were made, a busy thread starts (a real one, at the lowest priority) and
    from then on every call costs ``slowdown`` times more. The load and the clock are modelled, so
    that this shared test machine's own scheduling noise cannot decide the test; the rounds, the
    timing and the ratios are the bench's own code."""

    def __init__(self, trigger_after: int, slowdown: float = 3.0):
        self.calls, self.trigger_after, self.slowdown, self.seconds = 0, trigger_after, slowdown, 0.0
        self.stop, self.busy = threading.Event(), None

    def _spin(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        block = os.urandom(1 << 16)
        while not self.stop.is_set():
            hashlib.sha256(block).digest()

    def clock(self) -> float:
        return self.seconds

    def work(self, ms: float) -> None:
        self.calls += 1
        if self.calls == self.trigger_after:
            self.busy = threading.Thread(target=self._spin, name="busy-job", daemon=True)
            self.busy.start()
        self.seconds += ms * (self.slowdown if self.busy else 1.0) / 1000

    def close(self) -> None:
        self.stop.set()
        if self.busy:
            self.busy.join()


def two_rows(machine: SharedMachine) -> list[InProcess]:
    """A 10 ms and a 20 ms "backend": the true ratio is 2."""
    return [InProcess(lambda _x, ms=ms: machine.work(ms), sample=None, clock=machine.clock) for ms in (10.0, 20.0)]


ROUNDS, WARMUP, RUNS = 7, 1, 5
CALLS = 2 * ROUNDS * (WARMUP + RUNS)  # both rows, every round: warm-up (1) + timed runs


def test_alternating_rounds_keep_the_ratio_when_a_load_starts_halfway_and_the_sequential_method_does_not():
    machine = SharedMachine(trigger_after=CALLS // 2)
    try:
        times, failed = latency_rounds(two_rows(machine), (1,), rounds=ROUNDS, warmup=WARMUP, runs=RUNS)
    finally:
        machine.close()
    assert not failed and machine.calls == CALLS
    fast, slow = times[0][1], times[1][1]
    summary = latency_summary(slow, reference=fast)
    assert len(summary["round_ratios"]) == ROUNDS
    assert abs(summary["ratio"] / 2 - 1) < 0.05, summary  # the true 2x, though the load tripled every time
    # every round but the one in which the load began
    assert sum(abs(r / 2 - 1) < 0.05 for r in summary["round_ratios"]) == ROUNDS - 1, summary
    reference = latency_summary(fast, reference=fast)
    assert reference["ratio"] == 1.0 and reference["ratio_iqr"] == 0.0
    assert reference["iqr_ms"] > 10.0, reference  # the milliseconds did move (10 -> 30 ms): the spread says so
    assert drift(reference["round_medians_ms"]) is not None  # and the report flags the run

    # today's method on the same machine: each row timed in full, one after the other
    machine = SharedMachine(trigger_after=CALLS // 2)
    try:
        sequential = [
            latency_rounds([row], (1,), rounds=ROUNDS, warmup=WARMUP, runs=RUNS)[0][0][1] for row in two_rows(machine)
        ]
    finally:
        machine.close()
    seq_fast, seq_slow = (latency_summary(t, None)["median_ms"] for t in sequential)
    assert seq_slow / seq_fast / 2 > 1.5, (seq_fast, seq_slow)  # the second row took all the load


def test_a_row_that_fails_mid_rounds_is_dropped_and_the_others_finish():
    from benchmarks.bench import MeasureError

    class Dies:
        calls = 0

        def time(self, threads, warmup, runs):
            self.calls += 1
            if self.calls == 2:
                raise MeasureError("exit code -9")
            return [1.0] * runs

    steady = InProcess(lambda _x: None, sample=None)
    times, failed = latency_rounds([steady, Dies()], (1, 2), rounds=3, warmup=0, runs=2)
    assert failed == {1: "exit code -9"}
    assert [len(times[0][t]) for t in (1, 2)] == [3, 3] and len(times[1][1]) == 1


def reading(load=0.5, mhz=1500, governor="ondemand", temp=50.0, bits=None) -> dict:
    r = {
        "load_avg": [load, load, load],
        "cpu_freq": {"cpu0": {"mhz": mhz, "max_mhz": 1800, "governor": governor}},
        "temperature_c": {"cpu-thermal": temp},
    }
    return r | ({"throttled": hex(bits)} if bits is not None else {})


def test_changes_flag_load_heat_clock_governor_and_throttling_and_nothing_on_a_steady_run():
    assert changes(reading(), reading(load=1.9), own_threads=2) == []  # its own two threads, within slack
    assert changes(reading(bits=0x0), reading(bits=0x0), own_threads=1) == []
    found = changes(
        reading(load=0.2, bits=0x0),
        reading(load=4.0, mhz=600, governor="powersave", temp=78.0, bits=0x20002),
        own_threads=1,
    )
    assert len(found) == 5, found
    assert "load rose from 0.20 to 4.00" in found[0]
    assert "cpu-thermal warmed from 50.0 to 78.0 C" in found[1]
    assert "1500 to 600 MHz" in found[2] and "governor changed on cpu0" in found[3]
    assert "now: frequency capped" in found[4]
    began = changes(reading(bits=0x0), reading(bits=0x40000), own_threads=1)  # throttled since, not now
    assert began == ["the firmware reports since the start: throttled"]


def test_conditions_are_read_from_this_machine_and_from_vcgencmd_where_present(tmp_path, monkeypatch):
    now = read_conditions()
    assert len(now["load_avg"]) == 3 and all(x >= 0 for x in now["load_avg"])
    assert throttled() is None or isinstance(throttled(), int)
    fake = tmp_path / "vcgencmd"  # a Raspberry Pi's firmware tool, as it answers
    fake.write_text('#!/bin/sh\n[ "$1" = get_throttled ] && echo throttled=0x50005\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert throttled() == 0x50005 and read_conditions()["throttled"] == "0x50005"


def prepared_with(root, n: int):
    """A prepared-dataset folder of ``n`` val JPEGs (OpenCV only)."""
    (root / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1, n + 1):
        cv2.imwrite(str(root / "jpg" / f"image_{i:05d}.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        rows.append(
            dict(path=f"jpg/image_{i:05d}.jpg", cache_path="", image_id=i, class_index=i % 4,
                 class_name=f"flower {i % 4}", split="val", sha256="", width=64, height=48)
        )  # fmt: skip
    write_manifest(root / "manifest.csv", rows)
    return root


BENCH_PEAK = """
import json, sys
from benchmarks.bench import BenchConfig, bench
from benchmarks.measure import peak_rss_mb
report = bench(BenchConfig(models=sys.argv[1], data=sys.argv[2], out=sys.argv[3], threads=(1,), rounds=1, runs=2,
                           warmup=1, loop_frames=3))
print(json.dumps({"parent": peak_rss_mb(), "rows": [r.get("peak_rss_mb") for r in report["rows"]],
                  "n": report["rows"][0]["accuracy"]["n"], "errors": [r.get("error") for r in report["rows"]]}))
"""


@pytest.mark.slow
def test_bench_peak_memory_does_not_grow_with_the_split(tmp_path):
    from edge_runtime.spec import PreprocessSpec

    models = tmp_path / "exports"
    models.mkdir()
    tiny_onnx(models / "model_fp32.onnx", spec=PreprocessSpec(crop_size=224, resize_size=256))
    peaks = {}
    for n in (30, 300):  # 300 images at 224 px are 180 MB of float32: a batch held whole would show
        data = prepared_with(tmp_path / f"data{n}", n)
        done = subprocess.run(
            [sys.executable, "-c", BENCH_PEAK, str(models), str(data), str(tmp_path / f"bench{n}")],
            capture_output=True, text=True, cwd=REPO, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])
        # one row per backend that runs the file (onnxruntime, opencv, openvino): none failed
        assert peaks[n]["n"] == n and len(peaks[n]["errors"]) >= 2 and not any(peaks[n]["errors"]), peaks[n]
    small, large = peaks[30], peaks[300]
    assert large["parent"] - small["parent"] < 30, peaks  # the bench process
    for a, b in zip(small["rows"], large["rows"], strict=True):  # each file's measuring process
        assert b - a < 30, peaks


def test_clock_governor_and_temperatures_are_read_as_a_pi_exposes_them(tmp_path, monkeypatch):
    from benchmarks import conditions

    for cpu, khz in (("cpu0", "1500000"), ("cpu1", "600000")):
        folder = tmp_path / "cpu" / cpu / "cpufreq"
        folder.mkdir(parents=True)
        for name, value in (
            ("scaling_cur_freq", khz),
            ("cpuinfo_max_freq", "2400000"),
            ("scaling_governor", "ondemand"),
        ):
            (folder / name).write_text(value + "\n")
    zone = tmp_path / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("61234\n")
    (tmp_path / "thermal" / "thermal_zone1").mkdir()  # a zone that exposes nothing is left out
    monkeypatch.setattr(conditions, "CPU", tmp_path / "cpu")
    monkeypatch.setattr(conditions, "THERMAL", tmp_path / "thermal")
    now = read_conditions()
    assert now["cpu_freq"] == {
        "cpu0": {"mhz": 1500, "max_mhz": 2400, "governor": "ondemand"},
        "cpu1": {"mhz": 600, "max_mhz": 2400, "governor": "ondemand"},
    }
    assert now["temperature_c"] == {"cpu-thermal": 61.234}
