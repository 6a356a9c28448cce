"""Keep the model busy: read ahead and write behind in background threads, one model call at a time.

Around a forward of a few seconds, decoding the next image (~50 ms for a 1024x2048 PNG), encoding the outputs
(~70 ms per colour PNG) and the like are worth moving off the critical path. Threads suffice: OpenCV's decoders and
encoders, zlib, numpy and torch release the GIL while they work.

- `Prefetcher`: iterates a source (an evaluation `DataLoader`) in a background thread, a bounded number of items
  ahead; an error of the source surfaces where it happened in the sequence.
- `BackgroundWriter`: runs jobs (the ``on_prediction`` dumps of `evaluate_model`) in one background thread, in the
  order submitted, with a bounded backlog; the first failure is raised again in the submitting thread, at the next
  `submit` or at `drain`, which also waits for every job.
- `pipelined` + `SerializedCalls`: per-item jobs (`attnseg predict`: read, predict, write one image) in a small
  window of threads, results handed back in input order; the jobs share the model through a `SerializedCalls`
  proxy, so one forward runs at a time while the other job reads or writes.
- `written_behind`: per-item work whose model part runs in the caller's thread and whose writing runs behind it
  at idle priority (`attnseg predict` where the model's threads take every core).

`choose_pipeline` decides whether any of this pays: work beside the model only helps on cores the model's threads
leave free. Where its threads take every core (2 threads on the 2-core project machine), a loader worker decoding
or a writer encoding preempts one of them and the other waits at every barrier: measured on the idle AMX machine,
the demo model's 1.27 s OpenVINO forward took 2.05-2.23 s beside two loader workers and 1.56 s beside the writer
thread, 1.28-1.33 s with everything in line, and the whole loop took 1.73 s per image in line against 2.42 s
read ahead and written behind with two loader workers. There the reading stays in line and the writer runs at idle
priority (`lower_thread_priority`): the kernel gives it only the cycles the model's threads leave (barrier waits,
the single-threaded steps between forwards), so the dumps mostly hide instead of stalling the model. Measured on
a Zen 4 EPYC, 2 cores, the demo model at 1024x2048 with the five default dumps: everything in line +16.4% over the
model alone, a writer at normal priority +15.2%, the idle-priority writer +6.8% and +9.0% (two runs of
`python -m attnseg.benchmark.eval`).

All of them stop their threads on exit, so an exception or Ctrl-C in the caller leaves nothing running behind it
(a job already started is finished: the writers write atomically, `attnseg.fileio`).
"""

from __future__ import annotations

import inspect
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


@dataclass(frozen=True)
class PipelineChoice:
    """Whether to read ahead / write behind (`pipeline`), the loader workers to use, whether to write behind at idle
    priority when `pipeline` is off (`idle_writer`), and one line saying why."""

    pipeline: bool
    workers: int
    reason: str
    idle_writer: bool = False


def lower_thread_priority() -> bool:
    """Put the calling thread in Linux's idle scheduling class (``SCHED_IDLE``): it then runs only on cycles no
    other thread of the machine wants. Threads it starts later (an OpenMP team for torch's work) inherit the class.

    Returns:
        False where the system has no such class or refuses it (the thread then keeps its priority).
    """
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True


def choose_pipeline(
    requested: bool | None, compute_threads: int, workers: int, cores: int | None = None
) -> PipelineChoice:
    """Background threads and loader workers only where cores are left beside the model's threads.

    Args:
        requested: True or False (``--pipeline`` / ``--no-pipeline``) are kept; None decides from the cores.
        compute_threads: the threads the model runs on.
        workers: the configured loader workers (``eval.num_workers``), kept unless the decision is "in line".
        cores: cores this process may use (default: its affinity mask).
    """
    from attnseg.hardware import available_cores

    cores = available_cores() if cores is None else cores
    if requested is not None:
        return PipelineChoice(requested, workers, f"pipeline {'on' if requested else 'off'} (asked)")
    if cores > compute_threads:
        return PipelineChoice(True, workers, f"pipeline auto -> on: {cores - compute_threads} of {cores} cores beside "
                                             f"the model's {compute_threads} threads read ahead and write behind")
    return PipelineChoice(False, 0, f"pipeline auto -> off: the model's {compute_threads} threads take all {cores} "
                                    "cores, so reading and counting run in line, without loader workers (beside the "
                                    "model they would stall it), and files are written behind at idle priority; "
                                    "--pipeline / --no-pipeline force either", idle_writer=True)  # fmt: skip



def choose_pipeline_for(requested: bool | None, device: Any, workers: int) -> PipelineChoice:
    """`choose_pipeline` for a model on `device`: torch's threads on a CPU, none on an accelerator (whose work
    leaves the cores free). Prints the reason on stderr when the automatic choice turns the pipeline off."""
    import sys

    import torch

    threads = torch.get_num_threads() if torch.device(device).type == "cpu" else 0
    choice = choose_pipeline(requested, threads, workers)
    if requested is None and not choice.pipeline:
        print(choice.reason, file=sys.stderr)
    return choice

class _Failure:
    """An exception of the source, queued in its place."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate `source` in a background thread, up to `depth` items ahead of the consumer.

    Use as an iterator; `close` (or leaving a ``with`` block) stops the thread, also when the consumer stops early.

    Args:
        source: any iterable; it is iterated only in the background thread.
        depth: items kept ready beyond the one the consumer holds (at least 1).
        name: the thread's name.
    """

    def __init__(self, source: Iterable[T], depth: int = 1, name: str = "attnseg-prefetch"):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._fill, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Queue `item` unless the consumer has gone; False when it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, source: Iterable[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, who raises it in its own thread
            self._put(_Failure(error))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            self._thread.join()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the background thread (items not yet consumed are dropped) and wait for it."""
        self._finished = True
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting for room
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class BackgroundWriter:
    """Runs jobs in a background thread, in submission order, at most `max_pending` waiting or running.

    A job's exception is raised again, as the same exception object, by the next `submit` or by `drain`; the jobs
    queued behind a failed one are cancelled. Leaving a ``with`` block drains (an exception in the block: the jobs
    already submitted still run, their errors give way to the block's; Ctrl-C: queued jobs are cancelled).

    Args:
        max_pending: jobs allowed in the backlog (running included) before `submit` waits for the oldest; bounds
            the memory the queued arguments hold.
        name: prefix of the thread's name.
        idle_priority: run the thread at idle priority (`lower_thread_priority`), for a machine whose cores the
            caller's work takes.
    """

    def __init__(self, max_pending: int = 2, name: str = "attnseg-writer", idle_priority: bool = False):
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        # One thread: the jobs run in order and never two at a time, as they did in the caller's loop, so a
        # callback that is not thread-safe (a dumper counting its images) stays correct.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                            initializer=lower_thread_priority if idle_priority else None)
        self._pending: deque[Future] = deque()
        self._error: BaseException | None = None

    def _collect(self, wait_for: int) -> None:
        """Retire finished jobs (and wait until at most `wait_for` remain); remember the first failure."""
        while self._pending and (self._pending[0].done() or len(self._pending) > wait_for):
            future = self._pending.popleft()
            error = future.exception() if not future.cancelled() else None
            if error is not None and self._error is None:
                self._error = error
                for later in self._pending:
                    later.cancel()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``job(*args, **kwargs)``; first raises the failure of an earlier job, if one failed.

        The arguments are used by the job after this returns: the caller must not modify them.
        """
        self._collect(self.max_pending - 1)
        self._raise_error()
        self._pending.append(self._executor.submit(job, *args, **kwargs))

    def drain(self) -> None:
        """Wait for every job; raise the first failure."""
        self._collect(0)
        self._raise_error()

    def close(self, cancel: bool = False) -> None:
        """Stop the thread after the running job; `cancel` drops the queued ones, else they run first."""
        if cancel:
            for future in self._pending:
                future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if exc_type is None:
            try:
                self.drain()
            finally:
                self.close()
            return
        interrupted = not issubclass(exc_type, Exception)  # KeyboardInterrupt, SystemExit: do not wait for more
        self.close(cancel=interrupted)
        self._pending.clear()  # their errors give way to the one already propagating


class SerializedCalls:
    """A proxy of `target` whose calls hold `lock`: threads sharing one model run one forward at a time.

    Calling the proxy, or any method of the target except those named in `free`, holds the lock for the call;
    other attributes (data, the model object itself) are the target's own. Methods not named in `free` are
    serialized, so a method added to the target later is safe by default.

    Args:
        target: the shared object (a `Predictor`).
        lock: shared by every proxy of the same target.
        free: methods that do not touch the model and may run concurrently (colouring, blending).
        on_enter: called with the lock held, before each serialized call (e.g. to name the input in log lines the
            call prints).
    """

    def __init__(
        self,
        target: Any,
        lock: threading.Lock,
        free: Iterable[str] = (),
        on_enter: Callable[[], None] | None = None,
    ):
        self._target = target
        self._lock = lock
        self._free = frozenset(free)
        self._on_enter = on_enter

    def _serialized(self, function: Callable[..., R]) -> Callable[..., R]:
        def call(*args: Any, **kwargs: Any) -> R:
            with self._lock:
                if self._on_enter is not None:
                    self._on_enter()
                return function(*args, **kwargs)

        return call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._serialized(self._target)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # object.__getattribute__: no recursion into __getattr__ should `_target` be missing (copying, pickling)
        value = getattr(object.__getattribute__(self, "_target"), name)
        if name in self._free or not inspect.ismethod(value):  # data, and objects such as the model, as they are
            return value
        return self._serialized(value)


def pipelined(
    items: Iterable[T],
    job: Callable[[T], R],
    *,
    window: int = 2,
    inline: Callable[[T], bool] | None = None,
) -> Iterator[tuple[T, Callable[[], R]]]:
    """Run ``job(item)`` for up to `window` items at once in background threads; yield them in input order.

    Yields ``(item, result)`` where ``result()`` returns the job's value or raises its exception, so a caller's
    per-item ``try``/``except`` stays where it was. While the caller handles one item the next ones already run.
    Items for which `inline` is true run in the caller's thread when their ``result()`` is called, after every
    earlier item and before any later one starts (videos: their progress bar and memory need the machine alone).

    Args:
        items: the inputs.
        job: the work of one item; jobs of different items may run at the same time, so what they share must be
            thread-safe (share the model through `SerializedCalls`).
        window: items in flight; 1 runs every job in the caller's thread, one after the other (no threads).
        inline: which items run in the caller's thread.

    Stopping the iteration early (an exception, Ctrl-C) cancels the jobs not yet started and waits for the
    running ones.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if window == 1:
        for item in items:
            yield item, (lambda item=item: job(item))
        return
    source = iter(items)
    pending: deque[tuple[T, Future | None]] = deque()
    started: list[Future] = []
    executor = ThreadPoolExecutor(max_workers=window, thread_name_prefix="attnseg-pipeline")
    try:
        exhausted = False
        while True:
            # Fill the window, but never start an item behind an inline one: it runs alone.
            while not exhausted and len(pending) < window and not (pending and pending[-1][1] is None):
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                elif inline is not None and inline(item):
                    pending.append((item, None))
                else:
                    started[:] = [future for future in started if not future.done()]  # keeps no old results
                    started.append(executor.submit(job, item))
                    pending.append((item, started[-1]))
            if not pending:
                return
            item, future = pending.popleft()
            if future is None:
                wait(started)  # the earlier jobs, should the caller not have waited for their results
                started.clear()
                yield item, (lambda item=item: job(item))
            else:
                yield item, future.result
    finally:
        for _, future in pending:
            if future is not None:
                future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def written_behind(
    items: Iterable[T],
    prepare: Callable[[T], Callable[[], R]],
    *,
    inline: Callable[[T], bool] | None = None,
) -> Iterator[tuple[T, Callable[[], R]]]:
    """Run ``prepare(item)`` in the caller's thread and the ``finish`` function it returns (the writing) in one
    background thread at idle priority (`lower_thread_priority`); yield the items in input order.

    For a machine whose cores the model takes: the model runs in the caller's thread, one item after another, and
    each item's files are written on the cycles the next item's forward leaves. One item is written while the next
    is prepared: an item is yielded once the next one's writing has been queued.

    Yields ``(item, result)`` as `pipelined` does: ``result()`` waits for the item's writing and returns its value or
    raises the error of its ``prepare`` or ``finish``. Items for which `inline` is true run entirely in the caller's
    thread when their ``result()`` is called, after every earlier item's writing.

    Stopping the iteration early (an exception, Ctrl-C) cancels the writing not yet started and waits for the
    running one.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnseg-writer", initializer=lower_thread_priority)
    waiting: tuple[T, Callable[[], R]] | None = None
    try:
        for item in items:
            if inline is not None and inline(item):
                if waiting is not None:
                    yield waiting
                    waiting = None
                executor.submit(lambda: None).result()  # every earlier writing done (the caller may not have asked)
                yield item, (lambda item=item: prepare(item)())
                continue
            try:
                finish = prepare(item)
            except Exception as error:  # handed to this item's result, as a failing job's in `pipelined`
                current = (item, _raiser(error))
            else:
                current = (item, executor.submit(finish).result)
            if waiting is not None:
                yield waiting
            waiting = current
        if waiting is not None:
            yield waiting
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _raiser(error: BaseException) -> Callable[[], Any]:
    def result() -> Any:
        raise error

    return result
