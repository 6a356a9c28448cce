"""`attnseg predict` over many images reads the next image and writes the last one while the model runs, with the
same files, failure lines and exit code as one image after the other (--no-pipeline)."""

import threading
import time

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from attnseg.cli.main import main
from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.inference import predictor as predictor_module
from attnseg.models import MODEL_BUILDERS
from attnseg.models.outputs import SegmentationOutput
from attnseg.weights import save_checkpoint


class SlowNet(nn.Module):
    """A 1x1 convolution that takes its time, and counts how many of its forwards overlap."""

    running = 0
    most = 0
    guard = threading.Lock()

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        with SlowNet.guard:
            SlowNet.running += 1
            SlowNet.most = max(SlowNet.most, SlowNet.running)
        time.sleep(0.2)  # long enough that the next image is read during it, even on a busy machine
        with SlowNet.guard:
            SlowNet.running -= 1
        return SegmentationOutput(logits=self.conv(x))


@pytest.fixture()
def weights(tmp_path):
    MODEL_BUILDERS["evalspeed_slow"] = lambda num_classes=19: SlowNet(num_classes)
    torch.manual_seed(2)
    save_checkpoint(tmp_path / "w" / "model", SlowNet(), "evalspeed_slow", {}, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE,
                    (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    SlowNet.most = 0
    yield tmp_path / "w" / "model"
    MODEL_BUILDERS.pop("evalspeed_slow", None)


def _inputs(folder, count=6, bad=(2, 4)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"img{index}.png"
        if index in bad:
            path.write_bytes(b"\x89PNG not really")
        else:
            cv2.imwrite(str(path), rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))


def _files(out):
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def test_pipelined_predict_writes_what_the_sequential_one_writes(tmp_path, weights, capsys):
    _inputs(tmp_path / "in")
    runs = {}
    for mode, extra in (("sequential", ["--no-pipeline"]), ("pipelined", ["--pipeline"])):
        code = main(["predict", str(weights), str(tmp_path / "in"), "--out", str(tmp_path / mode), "--overlay",
                     "--confidence", "--no-progress", *extra])
        captured = capsys.readouterr()
        out = str(tmp_path / mode)
        runs[mode] = (code, captured.out.replace(out, "OUT"), captured.err.replace(out, "OUT"), _files(tmp_path / mode))
    sequential, pipelined = runs["sequential"], runs["pipelined"]
    assert sequential[0] == pipelined[0] == 2
    assert sequential[1] == pipelined[1] and "predicted 4 of 6 inputs" in pipelined[1]
    failures = [line for line in pipelined[2].splitlines() if "failed" in line]
    assert failures == [line for line in sequential[2].splitlines() if "failed" in line]
    assert ["img2.png" in failures[0], "img4.png" in failures[1]] == [True, True]  # in input order
    assert sequential[3] == pipelined[3] and len(pipelined[3]) == 4 * 4  # labels, color, overlay, confidence
    assert SlowNet.most == 1  # never two forwards at once


def test_next_image_is_read_while_the_model_runs(tmp_path, weights, monkeypatch, capsys):
    _inputs(tmp_path / "in", count=5, bad=())
    events = []
    read_image = predictor_module.read_image

    def recording_read(path):
        # A real 1024x2048 PNG takes tens of milliseconds to decode. Sampled at the end of such a read, the next
        # forward has certainly started: sampled at the start of a 1 ms read, the sample raced the thread that takes
        # the model's lock, and lost every time in one CI run.
        image = read_image(path)
        time.sleep(0.05)
        events.append(("read", path.name, SlowNet.running))
        return image

    monkeypatch.setattr(predictor_module, "read_image", recording_read)
    code = main(["predict", str(weights), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress",
                 "--pipeline"])  # 2-core machines read in line by default
    assert code == 0, capsys.readouterr().err
    assert sorted(name for _, name, _ in events) == [f"img{index}.png" for index in range(5)]
    assert any(running for *_, running in events)  # some image was decoded during another one's forward


def test_default_on_a_machine_the_model_fills_writes_behind_at_idle_priority(tmp_path, weights, monkeypatch, capsys):
    import os

    from attnseg import hardware
    from attnseg.inference import dump

    _inputs(tmp_path / "in")
    code = main(["predict", str(weights), str(tmp_path / "in"), "--out", str(tmp_path / "sequential"), "--overlay",
                 "--no-progress", "--no-pipeline"])  # fmt: skip
    sequential = (code, capsys.readouterr().err.replace(str(tmp_path / "sequential"), "OUT"))
    monkeypatch.setattr(hardware, "available_cores", lambda: torch.get_num_threads())  # every core is the model's
    writers = []
    write_png = dump.write_png

    def recording_write(path, image):
        policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
        writers.append((threading.current_thread().name, policy))
        write_png(path, image)

    monkeypatch.setattr(dump, "write_png", recording_write)
    code = main(["predict", str(weights), str(tmp_path / "in"), "--out", str(tmp_path / "behind"), "--overlay",
                 "--no-progress"])  # fmt: skip
    behind = (code, capsys.readouterr().err.replace(str(tmp_path / "behind"), "OUT"))
    assert sequential[0] == behind[0] == 2
    failures = [line for line in behind[1].splitlines() if "failed" in line]
    assert failures == [line for line in sequential[1].splitlines() if "failed" in line] and len(failures) == 2
    assert _files(tmp_path / "behind") == _files(tmp_path / "sequential") and len(_files(tmp_path / "behind")) == 12
    assert len(writers) == 12 and threading.current_thread().name not in {name for name, _ in writers}
    if hasattr(os, "SCHED_IDLE"):
        assert {policy for _, policy in writers} == {os.SCHED_IDLE}
