"""Resident memory probes: the size now, the high-water mark and its reset (Linux /proc)."""

import mmap
import sys

import numpy as np
import pytest

from attnseg.benchmark.memory import current_rss_bytes, peak_rss_bytes, reset_peak_memory


LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="the probes read Linux's /proc/self")


@LINUX_ONLY
def test_peak_is_at_least_the_current_size():
    # The size first: another thread (a runtime's pool) may grow the process between the two reads, and the
    # high-water mark read later covers the size read earlier.
    current = current_rss_bytes()
    assert peak_rss_bytes() >= current > 0


@LINUX_ONLY
def test_an_allocation_raises_the_peak_above_the_reset_baseline():
    if not reset_peak_memory():
        pytest.skip("/proc/self/clear_refs is not writable here")
    baseline = current_rss_bytes()
    # Fresh pages from the kernel, 64 MiB, touched: a malloc'd block may reuse memory an earlier test freed but left
    # resident (after the golden-output tests a 64 MiB np.ones raised nothing).
    block = mmap.mmap(-1, 64 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    assert peak_rss_bytes() - baseline > 48 * 2**20
    block.close()
