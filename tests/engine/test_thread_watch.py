"""The thread watch: other processes' load from /proc counters, and re-planning torch's threads as it changes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnseg.cpu_load import others_busy_cores, parse_proc_stat, process_tree_ticks
from attnseg.engine.thread_watch import ThreadWatch


def _stat_text(busy_per_cpu: list[int], total_per_cpu: list[int]) -> str:
    """A /proc/stat text whose cpuN lines hold `busy` user ticks and the rest idle."""
    lines = [f"cpu {sum(busy_per_cpu)} 0 0 {sum(total_per_cpu) - sum(busy_per_cpu)} 0 0 0 0"]
    for cpu, (busy, total) in enumerate(zip(busy_per_cpu, total_per_cpu)):
        lines.append(f"cpu{cpu} {busy} 0 0 {total - busy} 0 0 0 0 0 0")
    return "\n".join(lines) + "\n"


def test_others_busy_cores_subtracts_this_process_tree():
    before = {0: (100, 1000), 1: (100, 1000)}
    after = {0: (200, 1100), 1: (200, 1100)}  # both cores fully busy for 100 ticks
    assert others_busy_cores(before, after, own_ticks=0) == pytest.approx(2.0)
    assert others_busy_cores(before, after, own_ticks=100) == pytest.approx(1.0)
    assert others_busy_cores(before, after, own_ticks=200) == pytest.approx(0.0)
    assert others_busy_cores(before, after, own_ticks=100, cpus={0}) == pytest.approx(0.0)
    assert others_busy_cores(before, before, own_ticks=0) == 0.0


def test_process_tree_ticks_sums_a_process_and_its_descendants(tmp_path: Path):
    def write(pid: int, utime: int, stime: int, children: str) -> None:
        (tmp_path / str(pid) / "task" / str(pid)).mkdir(parents=True)
        # the command name may hold spaces and parentheses: fields are counted after the last ")"
        fields = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 5
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (python (x) y) " + " ".join(fields))
        (tmp_path / str(pid) / "task" / str(pid) / "children").write_text(children)

    write(10, 5, 1, "11 12")
    write(11, 7, 2, "")
    write(12, 3, 0, "99")  # 99 has already exited
    assert process_tree_ticks(10, proc=tmp_path) == 5 + 1 + 7 + 2 + 3


def test_process_tree_ticks_follows_this_process_and_a_busy_child():
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    start_ticks, start_cpu = process_tree_ticks(), time.process_time()
    end = time.perf_counter() + 0.4
    while time.perf_counter() < end:
        pass
    own = (process_tree_ticks() - start_ticks) / ticks_per_second
    assert own == pytest.approx(time.process_time() - start_cpu, abs=0.05)

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\ntime.sleep(30)"])  # fmt: skip
    try:
        before = process_tree_ticks()
        deadline = time.perf_counter() + 20
        while process_tree_ticks() - before < 0.5 * ticks_per_second and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert process_tree_ticks() - before >= 0.5 * ticks_per_second  # the child's CPU time counts as ours
    finally:
        child.kill()
        child.wait()


class _FakeMachine:
    """Two cores; `others` cores' worth of load from other processes and `own` from this process per second."""

    def __init__(self) -> None:
        self.now, self.others, self.own = 0.0, 0.0, 1.0
        self.busy, self.total, self.own_ticks, self.threads = [0, 0], [0, 0], 0, 2

    def advance(self, seconds: float) -> None:
        share = (self.others + self.own) / 2
        for cpu in (0, 1):
            self.busy[cpu] += int(round(100 * seconds * share))
            self.total[cpu] += int(round(100 * seconds))
        self.own_ticks += int(round(100 * seconds * self.own))
        self.now += seconds

    def watch(self, **kwargs) -> ThreadWatch:
        def set_threads(count: int) -> None:
            self.threads = count

        return ThreadWatch(2, interval=10.0, clock=lambda: self.now,
                           read_stat=lambda: parse_proc_stat(_stat_text(self.busy, self.total)), own_ticks=lambda: self.own_ticks,
                           set_threads=set_threads, get_threads=lambda: self.threads, **kwargs)  # fmt: skip


def test_thread_watch_lowers_and_raises_the_count_as_other_processes_come_and_go():
    machine, lines = _FakeMachine(), []
    watch = machine.watch(log=lines.append)
    machine.own = 2.0
    machine.advance(12)
    assert watch.tick() is None and machine.threads == 2  # only our own load: nothing changes

    machine.others, machine.own = 1.0, 1.0  # another job started beside us
    machine.advance(5)
    assert watch.tick() is None  # within the interval: no look
    machine.advance(6)
    assert watch.tick() == 1 and machine.threads == 1
    assert "threads 1 instead of 2" in lines[-1] and "1.0 of 2 cores busy" in lines[-1]

    machine.advance(11)
    assert watch.tick() is None and machine.threads == 1  # the other job still runs

    machine.others = 0.0  # it ended
    machine.advance(11)
    assert watch.tick() == 2 and machine.threads == 2
    assert [count for count, _ in watch.changes] == [1, 2]

    machine.others = 1.0
    machine.advance(11)
    watch.tick()
    assert machine.threads == 1
    watch.restore()
    assert machine.threads == 2


def test_thread_watch_is_off_where_attnseg_does_not_plan_threads(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert ThreadWatch.when_useful(torch.device("cpu")) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ThreadWatch.when_useful(torch.device("cpu")) is None
    monkeypatch.delenv("WORLD_SIZE")
    assert ThreadWatch.when_useful(torch.device("meta")) is None
    watch = ThreadWatch.when_useful(torch.device("cpu"), wanted=3)
    assert watch is not None and watch.wanted == 3


def test_the_trainer_re_plans_threads_after_steps_and_restores_them_at_the_end(tmp_path: Path):
    import train_worker

    machine, lines = _FakeMachine(), []
    watch = machine.watch(log=lines.append)
    machine.others = 1.0
    seen: list[int] = []
    trainer = train_worker.build(str(tmp_path), iters=4, batch=2,
                                 hook=lambda trainer, losses: (machine.advance(11), seen.append(machine.threads)))
    trainer.thread_watch = watch
    trainer.train()
    assert seen[1:] == [1, 1, 1]  # lowered after the first step, whose tick saw another process's core busy
    assert machine.threads == 2 and len(lines) == 1



def test_the_default_thread_count_is_one_per_physical_core():
    from attnseg.cpu_load import default_thread_count

    # torch's intra-op pool starts with one thread per physical core; the watch never plans above that by default
    assert 1 <= default_thread_count() <= len(os.sched_getaffinity(0))
    assert default_thread_count({0}) == 1
    # a fresh interpreter's torch (nothing has changed its count) starts with exactly that many threads
    done = subprocess.run([sys.executable, "-c", "import torch; from attnseg.cpu_load import default_thread_count; "
                           "print(torch.get_num_threads(), default_thread_count())"],
                          capture_output=True, text=True, check=True, env={k: v for k, v in os.environ.items()
                                                                           if k != "OMP_NUM_THREADS"})  # fmt: skip
    torch_default, ours = done.stdout.split()
    assert torch_default == ours
