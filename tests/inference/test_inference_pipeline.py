"""The read-ahead / write-behind machinery: order, bounds, errors where they belong, no thread left behind."""

import os
import threading
import time

import pytest

from attnseg.errors import DatasetError
from attnseg.inference.pipeline import BackgroundWriter, Prefetcher, SerializedCalls, pipelined, written_behind


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("attnseg-prefetch", "attnseg-writer",
                                                                   "attnseg-pipeline"))]


# --- Prefetcher -----------------------------------------------------------------------------------------------


def test_prefetcher_yields_everything_in_order_from_another_thread():
    threads = []

    def source():
        for index in range(5):
            threads.append(threading.current_thread())
            yield index

    with Prefetcher(source()) as items:
        assert list(items) == [0, 1, 2, 3, 4]
    assert threading.current_thread() not in threads
    assert not _pipeline_threads()


def test_prefetcher_reads_ahead_but_only_depth_items():
    produced = []

    def source():
        for index in range(10):
            produced.append(index)
            yield index

    with Prefetcher(source(), depth=2) as items:
        assert next(items) == 0
        deadline = time.monotonic() + 5
        while len(produced) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # item 0 consumed, 1 and 2 queued, 3 produced and waiting for room: never further ahead
        assert produced == [0, 1, 2, 3]
    assert not _pipeline_threads()


def test_prefetcher_raises_the_source_error_after_the_items_before_it():
    def source():
        yield "a"
        yield "b"
        raise DatasetError("broken.png: cannot be decoded")

    items = Prefetcher(source())
    assert next(items) == "a" and next(items) == "b"
    with pytest.raises(DatasetError, match="broken.png: cannot be decoded"):
        next(items)
    with pytest.raises(StopIteration):
        next(items)
    items.close()


def test_prefetcher_closed_early_stops_its_thread():
    def endless():
        index = 0
        while True:
            yield index
            index += 1

    with Prefetcher(endless(), depth=3) as items:
        assert next(items) == 0
    assert not _pipeline_threads()


# --- BackgroundWriter -----------------------------------------------------------------------------------------


def test_writer_runs_jobs_in_order_in_one_other_thread_and_drains():
    done, threads = [], set()

    def job(index):
        time.sleep(0.01 * (3 - index % 3))  # later jobs are quicker: order must still hold
        threads.add(threading.current_thread().name)
        done.append(index)

    with BackgroundWriter(max_pending=3) as writer:
        for index in range(7):
            writer.submit(job, index)
    assert done == list(range(7))
    assert len(threads) == 1 and threading.current_thread().name not in threads
    assert not _pipeline_threads()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling class")
def test_idle_priority_writer_runs_its_jobs_in_the_idle_class_and_leaves_the_caller_alone():
    policies = []
    caller = os.sched_getscheduler(0)
    with BackgroundWriter(max_pending=2, idle_priority=True) as writer:
        for _ in range(3):
            writer.submit(lambda: policies.append(os.sched_getscheduler(0)))
    assert policies == [os.SCHED_IDLE] * 3
    assert os.sched_getscheduler(0) == caller != os.SCHED_IDLE
    with BackgroundWriter(max_pending=1) as writer:  # the default keeps the priority
        writer.submit(lambda: policies.append(os.sched_getscheduler(0)))
    assert policies[-1] == caller


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="POSIX scheduling policies")
def test_lower_thread_priority_changes_only_the_calling_thread():
    from attnseg.inference.pipeline import lower_thread_priority

    result = []
    thread = threading.Thread(target=lambda: result.append((lower_thread_priority(), os.sched_getscheduler(0))))
    thread.start()
    thread.join()
    lowered, policy = result[0]
    assert lowered == hasattr(os, "SCHED_IDLE") and (not lowered or policy == os.SCHED_IDLE)
    assert os.sched_getscheduler(0) != getattr(os, "SCHED_IDLE", None)


def test_writer_backlog_is_bounded():
    release = threading.Event()
    started = []

    def slow(index):
        started.append(index)
        release.wait(5)

    writer = BackgroundWriter(max_pending=2)
    writer.submit(slow, 0)
    writer.submit(slow, 1)
    blocked = threading.Thread(target=writer.submit, args=(slow, 2))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # a third job waits for room
    release.set()
    blocked.join(5)
    writer.drain()
    writer.close()
    assert started == [0, 1, 2]


def test_writer_error_is_raised_in_the_caller_and_later_jobs_are_dropped():
    done = []

    def job(index):
        if index == 1:
            raise OSError("out/color/b.png: could not write image")
        time.sleep(0.05)
        done.append(index)

    writer = BackgroundWriter(max_pending=4)
    for index in range(4):
        writer.submit(job, index)
    with pytest.raises(OSError, match="b.png: could not write image") as raised:
        writer.drain()
    assert raised.value.__traceback__ is not None  # the job's own exception object
    writer.close()
    assert 0 in done and 3 not in done  # 3 was cancelled (2 may have been running already)


def test_writer_error_surfaces_at_the_next_submit():
    def fails():
        raise DatasetError("disk full")

    writer = BackgroundWriter(max_pending=1)
    writer.submit(fails)
    with pytest.raises(DatasetError, match="disk full"):
        writer.submit(lambda: None)
    writer.close()


def test_writer_leaving_on_an_error_finishes_submitted_jobs_and_keeps_the_error():
    done = []
    with pytest.raises(RuntimeError, match="model failed"):
        with BackgroundWriter(max_pending=3) as writer:
            writer.submit(lambda: (time.sleep(0.05), done.append(0)))
            writer.submit(lambda: (_ for _ in ()).throw(OSError("ignored: the model error wins")))
            raise RuntimeError("model failed")
    assert done == [0]
    assert not _pipeline_threads()


# --- SerializedCalls and pipelined ----------------------------------------------------------------------------


class _Model:
    """Counts how many of its forwards overlap."""

    def __init__(self):
        self.running = 0
        self.most = 0
        self.guard = threading.Lock()
        self.palette = [1, 2, 3]

    def __call__(self, value):
        return self.predict(value)

    def predict(self, value):
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.guard:
            self.running -= 1
        return value * 10

    def colorize(self, value):
        return -value


def test_serialized_calls_hold_the_lock_except_free_methods():
    model, lock, entered = _Model(), threading.Lock(), []
    proxy = SerializedCalls(model, lock, free=("colorize",), on_enter=lambda: entered.append(lock.locked()))
    assert proxy(2) == 20 and proxy.predict(3) == 30 and entered == [True, True]
    assert proxy.colorize(4) == -4 and len(entered) == 2  # free: no lock, no on_enter
    assert proxy.palette is model.palette
    with lock:  # held elsewhere: a free method still runs
        assert proxy.colorize(1) == -1


def test_pipelined_overlaps_jobs_but_never_two_forwards_and_keeps_order():
    model, lock = _Model(), threading.Lock()
    reading = []

    def job(index):
        time.sleep(0.03 if index % 2 else 0.0)  # "decoding" takes varying time
        reading.append(index)
        value = SerializedCalls(model, lock)(index)
        time.sleep(0.02)  # "writing"
        return value

    results = [(item, result()) for item, result in pipelined(range(8), job, window=3)]
    assert results == [(index, index * 10) for index in range(8)]
    assert model.most == 1
    assert not _pipeline_threads()


def test_pipelined_hands_each_error_to_its_own_item():
    def job(index):
        if index in (1, 3):
            raise DatasetError(f"img{index}.png: cannot be decoded")
        return index

    outcomes = []
    for item, result in pipelined(range(5), job, window=2):
        try:
            outcomes.append(result())
        except DatasetError as error:
            outcomes.append(str(error))
    assert outcomes == [0, "img1.png: cannot be decoded", 2, "img3.png: cannot be decoded", 4]


def test_pipelined_inline_items_run_alone_in_the_callers_thread():
    log = []
    guard = threading.Lock()

    def job(item):
        with guard:
            log.append(("start", item, threading.current_thread().name))
        time.sleep(0.02)
        with guard:
            log.append(("end", item, threading.current_thread().name))
        return item

    items = ["a", "b", "video", "c", "d"]
    got = [result() for _, result in pipelined(items, job, window=2, inline=lambda item: item == "video")]
    assert got == items
    start = log.index(("start", "video", threading.current_thread().name))
    end = log.index(("end", "video", threading.current_thread().name))
    assert end == start + 1  # nothing ran while the inline item did
    assert {entry[1] for entry in log[:start]} == {"a", "b"}


def test_pipelined_window_one_is_sequential_in_the_callers_thread():
    names = []
    results = pipelined(range(3), lambda item: names.append(threading.current_thread().name) or item, window=1)
    assert [result() for _, result in results] == [0, 1, 2]
    assert set(names) == {threading.current_thread().name}


def test_pipelined_stopped_early_cancels_what_has_not_started():
    started = []

    def job(item):
        started.append(item)
        time.sleep(0.05)
        return item

    for item, result in pipelined(range(100), job, window=2):
        result()
        if item == 2:
            break
    time.sleep(0.1)
    assert len(started) <= 5
    assert not _pipeline_threads()


def test_choose_pipeline_only_beside_free_cores():
    from attnseg.inference.pipeline import choose_pipeline

    # the model's threads take every core: read in line, no loader workers, write behind at idle priority
    inline = choose_pipeline(None, compute_threads=2, workers=2, cores=2)
    assert (inline.pipeline, inline.workers, inline.idle_writer) == (False, 0, True)
    assert "--pipeline / --no-pipeline force either" in inline.reason
    # cores left beside the model: read ahead with the configured workers
    spare = choose_pipeline(None, compute_threads=2, workers=2, cores=8)
    assert (spare.pipeline, spare.workers) == (True, 2) and "6 of 8 cores" in spare.reason
    # a GPU model (0 CPU threads) leaves the cores free
    assert choose_pipeline(None, compute_threads=0, workers=1, cores=2).pipeline
    # an explicit choice is kept, workers included
    assert choose_pipeline(True, 2, 2, cores=2) == choose_pipeline(True, 2, 2, cores=2)
    assert (choose_pipeline(True, 2, 2, cores=2).pipeline, choose_pipeline(True, 2, 2, cores=2).workers) == (True, 2)
    assert (choose_pipeline(False, 2, 2, cores=8).pipeline, choose_pipeline(False, 2, 2, cores=8).workers) == (False, 2)
    assert not choose_pipeline(False, 2, 2, cores=2).idle_writer  # --no-pipeline: everything in line
    assert not spare.idle_writer  # the pipeline's writer runs at normal priority


def test_choose_pipeline_for_a_device(capsys):
    from attnseg.inference.pipeline import choose_pipeline_for

    assert choose_pipeline_for(None, "meta", 2).pipeline  # no CPU threads: the cores are free
    asked = choose_pipeline_for(False, "cpu", 2)
    assert (asked.pipeline, asked.workers) == (False, 2) and capsys.readouterr().err == ""  # asked: nothing said


# --- written_behind ---------------------------------------------------------------------------------------------


def test_written_behind_prepares_in_the_caller_writes_behind_and_keeps_order_and_errors():
    events, lock = [], threading.Lock()
    caller = threading.current_thread().name

    def prepare(item):
        if item == "bad-read":
            raise DatasetError("bad-read: cannot be decoded")
        with lock:
            events.append(("prepare", item, threading.current_thread().name))

        def finish():
            time.sleep(0.03)
            if item == "bad-write":
                raise OSError("bad-write: disk full")
            with lock:
                events.append(("finish", item, threading.current_thread().name))
            return item.upper()

        return finish

    items = ["a", "bad-read", "b", "bad-write", "c"]
    outcomes = []
    for item, result in written_behind(items, prepare):
        try:
            outcomes.append((item, result()))
        except (DatasetError, OSError) as error:
            outcomes.append((item, str(error)))
    assert outcomes == [("a", "A"), ("bad-read", "bad-read: cannot be decoded"), ("b", "B"),
                        ("bad-write", "bad-write: disk full"), ("c", "C")]
    assert {thread for kind, _, thread in events if kind == "prepare"} == {caller}
    writers = {thread for kind, _, thread in events if kind == "finish"}
    assert len(writers) == 1 and caller not in writers
    # the next item is prepared while the last one is written: bad-write before b's writing ends
    order = [(kind, item) for kind, item, _ in events]
    assert order.index(("prepare", "bad-write")) < order.index(("finish", "b"))
    assert not _pipeline_threads()


def test_written_behind_runs_inline_items_after_every_earlier_writing():
    events = []

    def prepare(item):
        def finish():
            if item != "video":
                time.sleep(0.02)
            events.append((item, threading.current_thread().name))
            return item

        return finish

    results = [(item, result()) for item, result in written_behind(["a", "b", "video", "c"], prepare,
                                                                   inline=lambda item: item == "video")]
    assert results == [("a", "a"), ("b", "b"), ("video", "video"), ("c", "c")]
    assert [item for item, _ in events] == ["a", "b", "video", "c"]
    assert dict(events)["video"] == threading.current_thread().name != dict(events)["a"]


def test_written_behind_stopped_early_leaves_no_thread():
    def prepare(item):
        return lambda: time.sleep(0.01)

    for item, result in written_behind(range(10), prepare):
        result()
        if item == 2:
            break
    assert not _pipeline_threads()
