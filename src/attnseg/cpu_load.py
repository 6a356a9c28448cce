"""How busy the CPU cores are with other processes, from Linux's /proc counters.

``/proc/stat`` counts every process's time on each core; ``/proc/<pid>/stat`` this process's own. A process's own
OpenMP threads keep spinning for a while after each parallel region (about 0.2 s by default), so a load measured
from ``/proc/stat`` alone, even while the measuring thread sleeps, counts them as another process's work (measured:
half a core "busy" right after attnseg's imports on an idle machine). Every measurement here therefore subtracts the
ticks of this process and its children.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

_PROC = Path("/proc")


def process_tree_ticks(pid: int | None = None, proc: Path = _PROC) -> int:
    """User + system clock ticks of process `pid` (default: this one) and of its living descendants (e.g. the
    DataLoader's workers); processes that vanish while they are read count as 0."""
    pending, total, seen = [pid or os.getpid()], 0, set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = (proc / str(current) / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
            for task in (proc / str(current) / "task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


def others_busy_cores(
    before: dict[int, tuple[int, int]],
    after: dict[int, tuple[int, int]],
    own_ticks: int,
    cpus: set[int] | None = None,
) -> float:
    """Cores' worth of time other processes kept busy between two `parse_proc_stat` readings, given the clock ticks
    this process tree used in between (both counters are in the kernel's USER_HZ ticks)."""
    busy, elapsed = 0, []
    for cpu, (busy_after, all_after) in after.items():
        if (cpus is not None and cpu not in cpus) or cpu not in before:
            continue
        busy += busy_after - before[cpu][0]
        elapsed.append(all_after - before[cpu][1])
    if not elapsed or max(elapsed) <= 0:
        return 0.0
    per_cpu = sum(elapsed) / len(elapsed)
    return max(0.0, min(float(len(elapsed)), (busy - own_ticks) / per_cpu))


def parse_proc_stat(text: str) -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from a ``/proc/stat`` text (idle and iowait count as not busy)."""
    counts: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        numbers = [int(value) for value in values[:8]]
        idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
        counts[int(name[3:])] = (sum(numbers) - idle, sum(numbers))
    return counts


def busy_cores(before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]],
               cpus: set[int] | None = None) -> float:  # fmt: skip
    """Cores' worth of busy time between two `parse_proc_stat` readings, over `cpus` (default: all), this
    process's own time included."""
    return others_busy_cores(before, after, 0, cpus)


def read_proc_stat() -> dict[int, tuple[int, int]]:
    """`parse_proc_stat` of this machine's ``/proc/stat`` now (OSError where it cannot be read)."""
    return parse_proc_stat((_PROC / "stat").read_text())


def default_thread_count(cpus: set[int] | None = None) -> int:
    """Physical cores among `cpus` (default: this process's affinity mask), the count torch's intra-op pool uses by
    default: hyper-threads of one core share its units, so a thread per logical CPU only adds barrier waits."""
    try:
        cpus = cpus if cpus is not None else set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package, core = (topology / "physical_package_id").read_text(), (topology / "core_id").read_text()
            cores.add((package.strip(), core.strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count the CPU itself
    return max(1, len(cores))


def measure_busy_cores(interval: float = 0.1) -> float | None:
    """Cores of this process's affinity mask that other processes keep busy, measured over `interval` seconds
    (this process's own threads, e.g. OpenMP's spinning workers, are subtracted); None where ``/proc/stat`` cannot
    be read."""
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    try:
        before, own_before = read_proc_stat(), process_tree_ticks()
        time.sleep(interval)
        after, own_after = read_proc_stat(), process_tree_ticks()
    except OSError:
        return None
    return others_busy_cores(before, after, own_after - own_before, cpus)


__all__ = ["busy_cores", "default_thread_count", "measure_busy_cores", "others_busy_cores", "parse_proc_stat",
           "process_tree_ticks", "read_proc_stat"]
