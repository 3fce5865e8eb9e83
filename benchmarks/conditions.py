"""The machine's state around a benchmark: load, CPU frequency and governor, temperatures, throttling.

Read from what Linux and the boards expose (``/proc/loadavg``, cpufreq and thermal sysfs, a Raspberry
Pi's ``vcgencmd get_throttled``); what a machine does not expose is left out, never guessed. ``changes``
compares two readings and says, one short line each, what moved enough to make a timing suspect.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

CPU = Path("/sys/devices/system/cpu")
THERMAL = Path("/sys/class/thermal")
# vcgencmd get_throttled: bits 0-3 are "now" (under-voltage, frequency capped, throttled, soft
# temperature limit), bits 16-19 the same "since boot" (the Raspberry Pi documentation's table).
THROTTLED_NOW = 0xF
THROTTLED_NAMES = ("under-voltage", "frequency capped", "throttled", "soft temperature limit")
TEMPERATURE_RISE_C = 10.0  # a hotter SoC than this may already be clocking down (a Pi caps at 80-85 C)
FREQUENCY_DROP = 0.8  # a mean CPU clock below this fraction of the first reading: the CPU slowed
DRIFT = 1.25  # the reference row's slowest round over its fastest: the machine's speed moved


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_frequencies() -> dict:
    """Current and maximum frequency (MHz) and governor of each CPU that exposes cpufreq."""
    cpus = {}
    for folder in sorted(CPU.glob("cpu[0-9]*/cpufreq")):
        cur, top = _read(folder / "scaling_cur_freq"), _read(folder / "cpuinfo_max_freq")
        if cur and cur.isdigit():
            cpus[folder.parent.name] = {
                "mhz": int(cur) // 1000,
                "max_mhz": int(top) // 1000 if top and top.isdigit() else None,
                "governor": _read(folder / "scaling_governor"),
            }
    return cpus


def temperatures() -> dict:
    """Every thermal zone's temperature (degrees C), by its type (a Pi: cpu-thermal; a Jetson: one per block)."""
    zones = {}
    for zone in sorted(THERMAL.glob("thermal_zone*")):
        millidegrees = _read(zone / "temp")
        if millidegrees and millidegrees.lstrip("-").isdigit():
            zones[f"{_read(zone / 'type') or zone.name}"] = int(millidegrees) / 1000
    return zones


def throttled() -> int | None:
    """The Raspberry Pi firmware's throttling bits (``vcgencmd get_throttled``); None elsewhere."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    return int(match.group(1), 16) if match else None


def read_conditions() -> dict:
    """One reading of the machine's state; absent sources are left out."""
    reading = {"load_avg": [round(x, 2) for x in os.getloadavg()]}
    if cpus := cpu_frequencies():
        reading["cpu_freq"] = cpus
    if zones := temperatures():
        reading["temperature_c"] = zones
    if (bits := throttled()) is not None:
        reading["throttled"] = hex(bits)
    return reading


def throttle_names(bits: int) -> list[str]:
    return [name for i, name in enumerate(THROTTLED_NAMES) if bits & (1 << i)]


def changes(before: dict, after: dict, own_threads: int) -> list[str]:
    """What moved between two readings enough to make timings suspect, one line each.

    The run's own work raises the 1-minute load by up to ``own_threads``; only a rise beyond that
    (plus half a core of slack) is someone else's."""
    found = []
    rise = after["load_avg"][0] - before["load_avg"][0]
    if rise > own_threads + 0.5:
        found.append(
            f"load rose from {before['load_avg'][0]:.2f} to {after['load_avg'][0]:.2f} "
            f"(more than this run's own {own_threads} thread{'s' * (own_threads > 1)})"
        )
    hot_before, hot_after = before.get("temperature_c", {}), after.get("temperature_c", {})
    for zone in sorted(set(hot_before) & set(hot_after)):
        if hot_after[zone] - hot_before[zone] >= TEMPERATURE_RISE_C:
            found.append(f"{zone} warmed from {hot_before[zone]:.1f} to {hot_after[zone]:.1f} C")
    mhz_before = [c["mhz"] for c in before.get("cpu_freq", {}).values()]
    mhz_after = [c["mhz"] for c in after.get("cpu_freq", {}).values()]
    if (
        mhz_before
        and mhz_after
        and sum(mhz_after) / len(mhz_after) < FREQUENCY_DROP * sum(mhz_before) / len(mhz_before)
    ):
        found.append(
            f"mean CPU clock fell from {sum(mhz_before) // len(mhz_before)} to {sum(mhz_after) // len(mhz_after)} MHz"
        )
    gov_before = {cpu: c["governor"] for cpu, c in before.get("cpu_freq", {}).items()}
    gov_after = {cpu: c["governor"] for cpu, c in after.get("cpu_freq", {}).items()}
    if moved := sorted(cpu for cpu in gov_before.keys() & gov_after.keys() if gov_before[cpu] != gov_after[cpu]):
        found.append(f"the CPU governor changed on {', '.join(moved)}")
    if "throttled" in after:
        now = int(after["throttled"], 16)
        began = now & ~int(before.get("throttled", "0x0"), 16) & (THROTTLED_NOW << 16)
        if now & THROTTLED_NOW:
            found.append(f"the firmware reports now: {', '.join(throttle_names(now))} ({after['throttled']})")
        elif began:
            found.append(f"the firmware reports since the start: {', '.join(throttle_names(began >> 16))}")
    return found


def drift(round_medians_ms: list[float]) -> str | None:
    """A line when the reference row's round medians spread more than ``DRIFT``: the machine's speed moved."""
    if len(round_medians_ms) < 2 or min(round_medians_ms) <= 0:
        return None
    span = max(round_medians_ms) / min(round_medians_ms)
    if span < DRIFT:
        return None
    return (
        f"the reference row's round medians range from {min(round_medians_ms):.2f} to "
        f"{max(round_medians_ms):.2f} ms (x{span:.2f}): the machine's speed moved during the run"
    )
