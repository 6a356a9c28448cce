"""Running one function in a fresh spawned process, with a timeout, and getting back its JSON-able result.

A fresh process per measurement keeps one measurement's caches, allocator state, compiled kernels and memory
high-water mark from helping or hurting the next, and lets OpenMP read its settings when torch loads there.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _child_main(worker: Callable[..., Any], kwargs: dict[str, Any], result_path: str) -> None:
    try:
        result = {"ok": worker(**kwargs)}
    except BaseException as error:  # report anything (including MemoryError) to the parent
        result = {"error": f"{type(error).__name__}: {error}"}
    Path(result_path).write_text(json.dumps(result))


def run_in_child(worker: Callable[..., Any], timeout: float | None = None, **kwargs: Any) -> Any:
    """Run `worker(**kwargs)` in a fresh spawned process; its return value, or ``{"error": message}``.

    Args:
        worker: a module-level function (spawn pickles it by its qualified name), returning JSON-able data.
        timeout: seconds before the child is killed (None: no limit).
        **kwargs: its arguments (picklable).
    """
    context = multiprocessing.get_context("spawn")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = handle.name
    try:
        process = context.Process(target=_child_main, args=(worker, kwargs, result_path))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            return {"error": f"timed out after {timeout} s"}
        text = Path(result_path).read_text()
        if not text:
            return {"error": f"child exited with status {process.exitcode} (killed for memory?)"}
        result = json.loads(text)
        return result["ok"] if "ok" in result else result
    finally:
        Path(result_path).unlink(missing_ok=True)


def set_threads(threads: int) -> None:
    """Intra-op threads of torch in this (child) process."""
    import torch

    torch.set_num_threads(threads)
