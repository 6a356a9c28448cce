"""Trusting a run folder (issue #15): the training state is weights-only, the folder is locked while a run owns
it, a resume with another config is refused before anything is written, and metrics.jsonl holds each iteration
once after kills, restarts and resumes."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attnseg.cli.main import build_parser, main
from attnseg.config import load_config, save_config
from attnseg.engine.checkpoint import capture_rng_state, load_training_state, restore_rng_state, training_state_path
from attnseg.engine.run_lock import LOCK_NAME, RunLock, RunLockedError

import train_worker
from test_engine_training import _env, _run

HERE = Path(__file__).parent
CONFIG = HERE.parents[1] / "configs" / "synthetic_psanet_cpu.yaml"


# ---------------------------------------------------------------------------------------------------------------
# The training state loads with weights_only=True and resumes exactly
# ---------------------------------------------------------------------------------------------------------------
def test_saved_state_loads_weights_only_and_restores_every_generator(tmp_path):
    trainer = train_worker.build(str(tmp_path), iters=2, batch=2, save_interval=1)
    trainer.train()
    path = training_state_path(tmp_path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # no allowlist needed: plain data only
    assert state["iteration"] == 2 and state["best_miou"] == float("-inf") and len(state["rng"]) == 1
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item())
    restore_rng_state(state["rng"][0])
    restore_rng_state(state["rng"][0])  # twice: restoring must not consume or alias the stored state
    # the state was captured after step 2; the draws above came right after it as well
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item()) == expected
    other = train_worker.build(str(tmp_path / "other"), iters=2, batch=2)
    other.load_state_dict(load_training_state(path))
    assert (other.iteration, other.epoch, other.batch_in_epoch) == (2, trainer.epoch, trainer.batch_in_epoch)
    for name, value in trainer.optimizer.state_dict()["state"].items():
        assert torch.equal(value["momentum_buffer"], other.optimizer.state_dict()["state"][name]["momentum_buffer"])


def test_gaussian_cache_of_numpy_survives(tmp_path):
    np.random.seed(5)
    np.random.randn()  # leaves a cached second gaussian in the legacy generator
    state = capture_rng_state()
    expected = np.random.randn()
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert np.random.randn() == expected


def test_format_1_state_with_numpy_array_still_loads(tmp_path):
    """States written before the RNG was stored as tensors hold an ndarray: exactly those NumPy globals load."""
    trainer = train_worker.build(str(tmp_path), iters=1, batch=2)
    state = trainer.state_dict()
    state["format"] = "attnseg-training-state/1"
    state["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    expected = np.random.rand()
    path = tmp_path / "checkpoints" / "training_state.pt"
    path.parent.mkdir()
    torch.save(state, path)
    loaded = load_training_state(path)
    restore_rng_state(loaded["rng"][0])
    assert np.random.rand() == expected


@pytest.mark.parametrize("damage", ["truncated", "crafted", "text"])
def test_cli_resume_from_damaged_state_is_one_line(tmp_path, capsys, damage):
    from attnseg.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1, height=32, width=64)
    run, marker = tmp_path / "run", tmp_path / "MARKER"
    overrides = [f"data.root={root}", "model.name=psanet_r18_narrow", "model.kwargs={mask_size: [15, 15]}",
                 "data.crop_size=[32,32]", "data.num_workers=0", "train.batch_size=1", "eval.num_workers=0"]
    save_config(load_config(CONFIG, overrides), run / "config.yaml")
    state = training_state_path(run)
    state.parent.mkdir(parents=True)
    if damage == "truncated":
        torch.save(train_worker.build(str(tmp_path / "w"), iters=1, batch=2).state_dict(), state)
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "crafted":
        torch.save({"format": "attnseg-training-state/2", "rng": [_Payload(marker)]}, state)
    else:
        state.write_text("not a checkpoint\n")
    config_before = (run / "config.yaml").read_bytes()
    code = main(["train", str(CONFIG), *overrides, "--out", str(run), "--resume", "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.out + captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(state) in errors[0], captured.err
    if damage == "crafted":
        assert "posix.system" in errors[0] or "os.system" in errors[0]
    assert not marker.exists() and (run / "config.yaml").read_bytes() == config_before
    assert not (run / LOCK_NAME).exists()  # released although the run failed


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


# ---------------------------------------------------------------------------------------------------------------
# The run folder lock
# ---------------------------------------------------------------------------------------------------------------
_HOLDER = """
import sys, time
from attnseg.engine.run_lock import RunLock
lock = RunLock(sys.argv[1], command="holder").acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A second real process that holds the lock of tmp_path/run until killed."""
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "run")], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked", process.stderr.read()
        yield process
    finally:
        process.kill()
        process.wait()


def test_second_run_is_refused_naming_the_holder(tmp_path, holder, capsys):
    run = tmp_path / "run"
    with pytest.raises(RunLockedError) as error:
        RunLock(run).acquire()
    assert f"pid {holder.pid}" in str(error.value) and socket.gethostname() in str(error.value)
    for resume in ([], ["--resume"]):
        code = main(["train", str(CONFIG), "--out", str(run), "--no-progress", "--device", "cpu", *resume])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {holder.pid}" in err and "started" in err and "Traceback" not in err
    assert not (run / "config.yaml").exists()  # the refused runs wrote nothing
    holder.send_signal(signal.SIGKILL)  # dies without releasing: the kernel drops its flock
    holder.wait()
    announced = []
    lock = RunLock(run, announce=_Collect(announced)).acquire()
    try:
        assert "stale" in announced[0] and f"pid {holder.pid}" in announced[0]
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (run / LOCK_NAME).exists()


class _Collect:
    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        if text.strip():
            self.lines.append(text)

    def flush(self):
        pass


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(),
                                             "started": "2020-01-01T00:00:00", "command": "attnseg train x"}))
    announced = []
    with RunLock(run, announce=_Collect(announced)) as lock:
        assert lock.held and len(announced) == 1 and f"pid {dead_pid}" in announced[0]
        with pytest.raises(RunLockedError, match=f"in use by another run \\(pid {os.getpid()}"):
            RunLock(run).acquire()  # held: a second taker in this process is refused too
    assert not (run / LOCK_NAME).exists()


def test_without_flock_a_live_same_host_pid_is_refused_and_a_dead_one_taken_over(tmp_path, monkeypatch, holder):
    from attnseg.engine import run_lock

    monkeypatch.setattr(run_lock, "_try_flock", lambda descriptor: None)  # as on a file system without flock
    run = tmp_path / "other_run"
    run.mkdir()
    record = {"pid": holder.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00"}
    (run / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
        RunLock(run).acquire()
    holder.kill()
    holder.wait()
    announced = []
    with RunLock(run, announce=_Collect(announced)):
        assert f"pid {holder.pid}" in announced[0]


_FORKING_HOLDER = """
import os, sys, time
from attnseg.engine.run_lock import RunLock
lock = RunLock(sys.argv[1], command="holder").acquire()
child = os.fork()
if child == 0:  # like a data loader worker: outlives a killed parent for a while
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(120)
"""


def test_forked_children_do_not_keep_a_dead_runs_lock(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", _FORKING_HOLDER, str(run)], env=_env(), stdout=subprocess.PIPE,
                               text=True)
    child = int(process.stdout.readline())
    try:
        with pytest.raises(RunLockedError):
            RunLock(run).acquire()
        process.kill()
        process.wait()
        os.kill(child, 0)  # the child still runs ...
        with RunLock(run, announce=_Collect([])) as lock:  # ... yet the lock is free
            assert lock.held
    finally:
        process.kill()
        process.wait()
        os.kill(child, signal.SIGKILL)


def test_lock_is_released_on_exceptions(tmp_path):
    with pytest.raises(KeyError):
        with RunLock(tmp_path):
            raise KeyError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()


# ---------------------------------------------------------------------------------------------------------------
# Resume with another config
# ---------------------------------------------------------------------------------------------------------------
def _fake_run(tmp_path, overrides=()):
    run = tmp_path / "run"
    save_config(load_config(CONFIG, list(overrides)), run / "config.yaml")
    training_state_path(run).parent.mkdir(parents=True)
    training_state_path(run).write_bytes(b"never read: the config check comes first")
    return run


def test_resume_with_changed_learning_keys_is_refused_before_writing(tmp_path, capsys):
    run = _fake_run(tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code = main(["train", str(CONFIG), "train.lr=0.5", "train.iters=7", "data.crop_size=[32,32]", "--out", str(run),
                 "--resume", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "train.lr: 0.02 -> 0.5" in err and "data.crop_size: [" in err and "train.iters" in err.split("only")[1]
    assert "train.iters: " not in err.split("only")[0]  # an allowed change is not listed as a refusal
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_allowed_resume_changes_are_returned(tmp_path):
    from attnseg.cli.train import RESUME_CHANGEABLE_KEYS, check_resume_config

    run = _fake_run(tmp_path)
    changed = load_config(CONFIG, ["train.iters=9", "data.num_workers=0", "eval.batch_size=3"])
    changes = check_resume_config(run, changed)
    base = load_config(CONFIG)
    assert changes == {"train.iters": (base.train.iters, 9), "data.num_workers": (base.data.num_workers, 0),
                       "eval.batch_size": (base.eval.batch_size, 3)}
    assert set(changes) <= set(RESUME_CHANGEABLE_KEYS)
    assert check_resume_config(run, base) == {}


def test_train_help_lists_the_keys_allowed_on_resume():
    from attnseg.cli.train import RESUME_CHANGEABLE_KEYS

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    text = " ".join(subparsers.choices["train"].format_help().split())
    for key in RESUME_CHANGEABLE_KEYS:
        assert key in text


# ---------------------------------------------------------------------------------------------------------------
# metrics.jsonl: each iteration once
# ---------------------------------------------------------------------------------------------------------------
def _iterations(run):
    return [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_before_first_checkpoint_then_fresh_start_logs_each_iteration_once(tmp_path):
    run = tmp_path / "run"
    killed = _run([run, "--iters", 8, "--kill-after", 5], check=False)  # save-interval 0: saves only at the end
    assert killed.returncode == -signal.SIGKILL and not training_state_path(run).exists()
    assert _iterations(run) == [2, 4]
    _run([run, "--iters", 8])
    assert _iterations(run) == [2, 4, 6, 8]


def test_resume_after_kill_drops_a_half_written_line(tmp_path):
    run = tmp_path / "run"
    killed = _run([run, "--iters", 8, "--save-interval", 3, "--kill-after", 5], check=False)
    assert killed.returncode == -signal.SIGKILL and load_training_state(training_state_path(run))["iteration"] == 3
    with (run / "metrics.jsonl").open("a") as stream:
        stream.write('{"iter": 5, "lo')  # what a kill in the middle of a write leaves
    _run([run, "--iters", 8, "--save-interval", 3, "--resume"])
    assert _iterations(run) == [2, 4, 6, 8]

