"""Resident memory of this process from Linux's /proc: the size now, the high-water mark, and its reset.

A benchmark measures what one phase adds (inference on top of a loaded model) by reading the resident size, resetting
the high-water mark (``/proc/self/clear_refs``), running, then reading the mark again. Where /proc is missing (not
Linux) the size reads 0 and the mark falls back to ``ru_maxrss``, which covers the whole life of the process.
"""

from __future__ import annotations

from pathlib import Path

GB = 1024**3


def _read_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory() -> bool:
    """Reset this process's resident high-water mark (Linux ``clear_refs`` 5); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """Resident set size now (0 where /proc is unavailable)."""
    kb = _read_status_kb("VmRSS")
    return 0 if kb is None else kb * 1024


def peak_rss_bytes() -> int:
    """Resident high-water mark (``VmHWM``; falls back to ``ru_maxrss``)."""
    kb = _read_status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024
