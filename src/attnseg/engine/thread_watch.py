"""Re-planning torch's threads while a long job runs, as other processes come and go.

The thread plan at start (`attnseg.hardware.plan_threads`) sees only the load of that moment. Two jobs started
together each see an idle machine, each take every core, and then both wait at every OpenMP barrier for a
descheduled thread: measured on 2 cores, two demos started at once stepped at ~9 s instead of 0.87 s. A
`ThreadWatch` looks again every `interval` seconds without pausing the job: it reads how busy the cores were
(``/proc/stat``) and how much of that was this process and its children (``/proc/<pid>/stat``), so what is left
is other processes' load, and sets torch's intra-op threads to what `attnseg.hardware.choose_threads` allows,
lowering and raising the count as the load changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnseg.cpu_load import default_thread_count, others_busy_cores, process_tree_ticks, read_proc_stat
from attnseg.hardware import choose_threads


class ThreadWatch:
    """Every `interval` seconds of `tick()` calls, re-plans torch's intra-op threads for the current load.

    Args:
        wanted: the most threads to use (the count chosen before any lowering).
        interval: seconds between looks; a look costs two small /proc reads, nothing waits.
        log: receives one line when the count changes.
        clock, read_stat, own_ticks, set_threads, get_threads: injectable for tests (default: monotonic time,
            `read_proc_stat`, `process_tree_ticks`, torch's thread count).
    """

    def __init__(
        self,
        wanted: int,
        interval: float = 15.0,
        log: Callable[[str], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        read_stat: Callable[[], dict[int, tuple[int, int]]] = read_proc_stat,
        own_ticks: Callable[[], int] = process_tree_ticks,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        get_threads: Callable[[], int] = torch.get_num_threads,
    ) -> None:
        self.wanted = max(1, int(wanted))
        self.interval = float(interval)
        self.log = log
        self._clock, self._own_ticks = clock, own_ticks
        self._read_stat = read_stat
        self._set_threads, self._get_threads = set_threads, get_threads
        try:
            self._cpus: set[int] | None = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._cpus = None
        self.changes: list[tuple[int, str]] = []
        self.initial_threads = self._get_threads()
        self._start_window()

    @classmethod
    def when_useful(cls, device: torch.device, wanted: int | None = None, **kwargs) -> ThreadWatch | None:
        """A watch for a single CPU process whose threads attnseg plans; None on CUDA, in a distributed run
        (each rank's threads are the launcher's business) or when ``OMP_NUM_THREADS`` fixes the count."""
        if torch.device(device).type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
            return None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not Path("/proc/stat").exists():
            return None
        # torch's default count, not the current one: `attnseg train` may already have lowered it at start
        return cls(wanted or max(torch.get_num_threads(), default_thread_count()), **kwargs)

    def _start_window(self) -> None:
        self._window_start = self._clock()
        try:
            self._stat = self._read_stat()
            self._ticks = self._own_ticks()
        except OSError:
            self._stat = None

    def tick(self) -> int | None:
        """Call often (e.g. after each training step); returns the new thread count when it changed, else None."""
        if self._stat is None or self._clock() - self._window_start < self.interval:
            return None
        try:
            after, ticks = self._read_stat(), self._own_ticks()
        except OSError:
            return None
        others = others_busy_cores(self._stat, after, ticks - self._ticks, self._cpus)
        self._stat, self._ticks, self._window_start = after, ticks, self._clock()
        available = len(self._cpus) if self._cpus else len(after) or 1
        plan = choose_threads(self.wanted, available, others)
        if plan.threads == self._get_threads():
            return None
        self._set_threads(plan.threads)
        line = f"re-planned: {plan.reason}"
        self.changes.append((plan.threads, line))
        if self.log is not None:
            self.log(line)
        return plan.threads

    def restore(self) -> None:
        """Back to the thread count the watch started with (a job's end must not leave its process re-planned)."""
        if self._get_threads() != self.initial_threads:
            self._set_threads(self.initial_threads)


__all__ = ["ThreadWatch"]
