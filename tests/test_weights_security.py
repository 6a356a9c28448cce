"""No file attnseg reads may run code, and a damaged one is a one-line error naming it (issue #15).

Each reader gets a crafted payload that would create a marker file if anything in it were executed (a pickle
whose ``__reduce__`` calls ``os.system``, a sidecar naming Python code as its model, a YAML ``!!python`` tag), and
damaged inputs (text named .pth, a truncated file, random bytes, an empty file) go through the command line,
which must exit 2 with one line and no traceback.
"""

import json
import os
import pickle

import pytest
import torch
from torch import nn

from attnseg.cli.main import main
from attnseg.config import load_config
from attnseg.engine.checkpoint import load_training_state
from attnseg.errors import ConfigError, WeightsError
from attnseg.weights import load_model, read_checkpoint_file, save_checkpoint


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _check_refused(error: Exception, path, marker):
    message = str(error)
    assert not marker.exists(), "the payload ran"
    assert str(path) in message and "system" in message, message  # names the file and the global (posix.system)
    assert "\n" not in message and "weights_only=False" not in message  # one line, no advice to disable safety


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_crafted_torch_checkpoint_is_refused(tmp_path, suffix):
    marker, path = tmp_path / "MARKER", tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError) as error:
        read_checkpoint_file(path)
    _check_refused(error.value, path, marker)


def test_crafted_training_state_is_refused(tmp_path):
    marker, path = tmp_path / "MARKER", tmp_path / "checkpoints" / "training_state.pt"
    path.parent.mkdir()
    torch.save({"format": "attnseg-training-state/2", "iteration": 1, "rng": [_Payload(marker)]}, path)
    with pytest.raises(WeightsError) as error:
        load_training_state(path)
    _check_refused(error.value, path, marker)


def test_crafted_pdparams_is_refused(tmp_path):
    marker, path = tmp_path / "MARKER", tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"conv.weight": _Payload(marker)}, protocol=2))
    with pytest.raises(WeightsError) as error:
        read_checkpoint_file(path)
    _check_refused(error.value, path, marker)


def _native_checkpoint(tmp_path):
    model = nn.Conv2d(3, 2, 1)
    return save_checkpoint(tmp_path / "native", model, "psanet_r18_narrow", {}, ["a", "b"], [[0, 0, 0], [9, 9, 9]],
                           [123.7, 116.3, 103.5], [58.4, 57.1, 57.4])


@pytest.mark.parametrize("field, value", [
    ("model", "__import__('os').system('touch MARKER')"),
    ("model", "os.system"),
    ("model_kwargs", {"__reduce__": "os.system", "touch": "MARKER"}),
    ("format_version", "__import__('os').system('touch MARKER')"),
])
def test_safetensors_sidecar_is_data_only(tmp_path, monkeypatch, field, value):
    """The sidecar's model name is only looked up in the registry and nothing in it is evaluated."""
    monkeypatch.chdir(tmp_path)
    weights, sidecar = _native_checkpoint(tmp_path)
    data = json.loads(sidecar.read_text())
    data[field] = value
    sidecar.write_text(json.dumps(data))
    with pytest.raises(WeightsError) as error:
        load_model(weights)
    assert not (tmp_path / "MARKER").exists()
    assert "native" in str(error.value) and "\n" not in str(error.value)


def test_yaml_python_tags_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker, path = tmp_path / "MARKER", tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert not marker.exists() and str(path) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "base_evil.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    (tmp_path / "child.yaml").write_text("base: base_evil.yaml\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "child.yaml")
    assert main(["train", str(path)]) == 2
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Damaged files through the command line: exit 2, one line, no traceback
# ---------------------------------------------------------------------------------------------------------------
def _damaged(tmp_path, kind):
    if kind == "text.pth":
        path = tmp_path / "text.pth"
        path.write_text("these are not weights\njust text\n")
    elif kind == "truncated.pt":
        path = tmp_path / "truncated.pt"
        torch.save({"w": torch.ones(4096)}, path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "random.safetensors":
        path = tmp_path / "random.safetensors"
        path.write_bytes(os.urandom(512))
    else:
        path = tmp_path / "empty.pdparams"
        path.write_bytes(b"")
    return path


def _assert_one_line_error(capsys, code, path):
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == 2, output
    assert "Traceback" not in output
    error_lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and str(path) in error_lines[0], captured.err


@pytest.mark.parametrize("kind", ["text.pth", "truncated.pt", "random.safetensors", "empty.pdparams"])
def test_damaged_weights_via_convert_weights(tmp_path, capsys, kind):
    path = _damaged(tmp_path, kind)
    code = main(["convert-weights", str(path), str(tmp_path / "out")])
    _assert_one_line_error(capsys, code, path)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("kind", ["text.pth", "empty.pdparams"])
def test_damaged_weights_via_eval(tmp_path, capsys, kind):
    from pathlib import Path

    path = _damaged(tmp_path, kind)
    config = Path(__file__).parents[1] / "configs" / "synthetic_psanet_cpu.yaml"
    code = main(["eval", str(config), "model.name=psanet_r18_narrow", f"data.root={tmp_path}", "--weights", str(path),
                 "--device", "cpu", "--no-progress"])
    _assert_one_line_error(capsys, code, path)


def test_damaged_safetensors_via_predict(tmp_path, capsys):
    weights, _ = _native_checkpoint(tmp_path)
    weights.write_bytes(os.urandom(256))  # the sidecar is fine, the tensors are not
    image = tmp_path / "image.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    code = main(["predict", str(weights), str(image), "--out", str(tmp_path / "pred"), "--no-progress"])
    _assert_one_line_error(capsys, code, weights)
