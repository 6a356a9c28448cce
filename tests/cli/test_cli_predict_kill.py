"""`attnseg predict` killed with SIGKILL mid-run leaves only complete files under final names."""

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.fileio import TEMP_SUFFIX
from attnseg.models import create_model
from attnseg.weights import save_checkpoint

COUNT = 20
SHAPE = (64, 96)  # (height, width)


def _final_outputs(out):
    return sorted(p for p in out.rglob("*") if p.is_file() and TEMP_SUFFIX not in p.name)


def _check_complete(out, names):
    for path in _final_outputs(out):
        assert path.stat().st_size > 0, f"{path} is empty"
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image is not None, f"{path} does not decode"
        assert image.shape[:2] == SHAPE, f"{path} is {image.shape}"
        assert path.name.rsplit("_", 1)[0] in names and path.name.rsplit("_", 1)[1] in ("labels.png", "color.png",
                                                                                        "overlay.png")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_leaves_no_partial_file_and_rerun_completes(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "w" / "model", create_model("psanet_r18_narrow", num_classes=19), "psanet_r18_narrow",
                    {}, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"img{index:02d}" for index in range(COUNT)]
    for name in names:
        cv2.imwrite(str(folder / f"{name}.png"), rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "attnseg", "predict", str(tmp_path / "w" / "model"), str(folder), "--out",
               str(out), "--overlay", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("*_labels.png"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert still_running, f"predict ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    process.stderr.close()
    done = len(list(out.rglob("*_labels.png")))
    assert 3 <= done < COUNT
    _check_complete(out, names)
    # what a write cut short by the kill looks like: a temporary of the dead process
    stale = out / "in" / f".img19_color.png.{process.pid}.abc123{TEMP_SUFFIX}.png"
    stale.write_bytes(b"\x89PNG truncated")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [p for p in out.rglob("*") if TEMP_SUFFIX in p.name]
    _check_complete(out, names)
    assert len(_final_outputs(out)) == 3 * COUNT
