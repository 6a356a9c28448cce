"""Dumps, submission PNGs and exported models appear under their final names only when complete."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from attnseg.data.labels import CITYSCAPES_PALETTE, train_id_to_id
from attnseg.fileio import TEMP_SUFFIX
from attnseg.inference.dump import PredictionDumper, write_png
from attnseg.inference.submission import SubmissionWriter
from attnseg.models.outputs import SegmentationOutput


def _temporaries(folder):
    return [p for p in folder.rglob("*") if TEMP_SUFFIX in p.name]


@pytest.fixture(scope="module")
def dead_pid():
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def _plant_stale(folder, name, pid):
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / f".{name}.{pid}.x1y2z3{TEMP_SUFFIX}.png"
    stale.write_bytes(b"\x89PNG cut short")
    return stale


def test_dumper_cleans_stale_temporaries_and_writes_complete_pngs(tmp_path, dead_pid):
    stale = _plant_stale(tmp_path / "dump" / "color", "a.png", dead_pid)
    dumper = PredictionDumper(tmp_path / "dump", CITYSCAPES_PALETTE, (0, 0, 0), (1, 1, 1),
                              kinds=("color", "trainIds", "labelIds", "overlay"), train_id_to_label_id=train_id_to_id)
    assert not stale.exists()
    prediction = np.random.default_rng(0).integers(0, 19, (1, 12, 20), dtype=np.uint8)
    dumper(["a"], prediction, {"batch": {"image": torch.zeros(1, 3, 12, 20)}})
    assert not _temporaries(tmp_path / "dump")
    train_ids = cv2.imread(str(tmp_path / "dump" / "trainIds" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(train_ids, prediction[0])
    for kind in ("color", "labelIds", "overlay"):
        assert cv2.imread(str(tmp_path / "dump" / kind / "a.png")).shape[:2] == (12, 20)


def test_failed_image_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.notanimageformat"
    with pytest.raises(OSError, match="could not write"):
        write_png(target, np.zeros((4, 4), np.uint8))
    assert not target.exists() and not _temporaries(tmp_path)
    old = tmp_path / "old.png"
    cv2.imwrite(str(old), np.full((3, 3), 7, np.uint8))
    write_png(old, np.full((5, 6), 9, np.uint8))  # replaced whole, never half-written
    assert cv2.imread(str(old), cv2.IMREAD_UNCHANGED).shape == (5, 6) and not _temporaries(tmp_path)


def test_submission_writer_is_atomic(tmp_path, dead_pid):
    stale = _plant_stale(tmp_path / "sub", "aachen_000000_000019_leftImg8bit.png", dead_pid)
    writer = SubmissionWriter(tmp_path / "sub")
    assert not stale.exists()
    prediction = np.random.default_rng(1).integers(0, 19, (1, 8, 16), dtype=np.uint8)
    writer(["aachen_000000_000019_leftImg8bit"], prediction)
    (path,) = writer.written
    assert path.name == "aachen_000000_000019_leftImg8bit.png" and not _temporaries(tmp_path / "sub")
    assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), train_id_to_id[prediction[0]])


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)

    def forward(self, x):
        return SegmentationOutput(logits=self.conv(x))


def test_onnx_export_is_renamed_only_when_complete(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from attnseg.export import onnx as onnx_export

    path = tmp_path / "model.onnx"
    sidecar = onnx_export.export_onnx(_Conv().eval(), path, (1, 3, 16, 16), verify=True)
    assert not _temporaries(tmp_path)
    onnx.checker.check_model(str(path))
    assert json.loads((tmp_path / "model.onnx.json").read_text())["num_classes"] == sidecar.num_classes == 19
    before = path.read_bytes()
    # a failing export (here: a check after writing the graph) keeps the previous file and leaves no temporary
    monkeypatch.setattr(onnx_export, "non_standard_ops", lambda model: ["custom::Op"])
    with pytest.raises(onnx_export.ExportError, match="non-standard"):
        onnx_export.export_onnx(_Conv().eval(), path, (1, 3, 16, 16))
    assert path.read_bytes() == before and not _temporaries(tmp_path)


def test_openvino_export_is_renamed_only_when_complete(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    from attnseg.export.openvino import compile_openvino, export_openvino

    export_openvino(_Conv().eval(), tmp_path / "model.xml", (1, 3, 16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml", "model.xml.json"]
    assert compile_openvino(tmp_path / "model.xml") is not None
