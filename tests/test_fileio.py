"""Atomic writes: a final name holds a complete file or nothing; temporaries of dead processes are cleaned up."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from attnseg.fileio import (
    atomic_open,
    atomic_write_text,
    atomic_write_with,
    remove_stale_temporaries,
    temporary_path_for,
)


def test_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as stream:
            stream.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_temporary_keeps_the_suffix_so_cv2_picks_the_format(tmp_path):
    target = tmp_path / "pred.png"
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    atomic_write_with(target, lambda temp: cv2.imwrite(str(temp), image))
    assert np.array_equal(cv2.imread(str(target), cv2.IMREAD_UNCHANGED), image)


def test_writer_reporting_failure_leaves_nothing(tmp_path):
    with pytest.raises(OSError, match="could not write"):
        atomic_write_with(tmp_path / "x.png", lambda temp: False)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    orphan = tmp_path / "sub" / f".img.png.{dead_pid}.abc123.attnseg-tmp.png"
    orphan.write_bytes(b"partial")
    live = temporary_path_for(tmp_path / "other.png")  # this process's own, still being written
    unrelated = tmp_path / ".hidden.png"
    unrelated.write_bytes(b"user file")
    assert remove_stale_temporaries(tmp_path) == [orphan]
    assert live.exists() and unrelated.exists() and not orphan.exists()
    assert str(os.getpid()) in live.name


def test_final_file_has_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644
