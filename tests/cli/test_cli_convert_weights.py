"""`attnseg convert-weights` and `attnseg list-models` on checkpoints written to a temporary folder."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from parity import paddle_filled_checkpoint
from safetensors import safe_open

from attnseg.cli.main import main
from attnseg.models import create_model, list_models


def test_paddle_mscale_release_layout_converts_to_a_native_checkpoint(tmp_path, capsys):
    source = tmp_path / "model.pdparams"
    state = paddle_filled_checkpoint("mscale_ocrnet")
    with source.open("wb") as file:
        pickle.dump(state, file, protocol=4)  # what paddle.save writes: name -> numpy array

    assert main(["convert-weights", str(source), str(tmp_path / "out" / "cityscapes_sota")]) == 0

    printed = capsys.readouterr().out
    assert "mscale_ocr_hrnet_w48 with 19 classes" in printed and "1903/1903" in printed
    sidecar = json.loads((tmp_path / "out" / "cityscapes_sota.json").read_text())
    assert sidecar["model"] == "mscale_ocr_hrnet_w48" and sidecar["num_classes"] == 19
    assert sidecar["class_names"][0] == "road" and sidecar["palette"][0] == [128, 64, 128]
    # CityscapesSOTA's configs normalise with ImageNet statistics, not PaddleSeg's 0.5/0.5 default.
    assert sidecar["preprocessing"]["mean"] == [123.675, 116.28, 103.53]
    assert sidecar["extra"]["source_layout"] == "paddle"
    # PaddleSeg resizes inputs by scale_factor as given (not recomputed from the floored size).
    assert sidecar["model_kwargs"] == {"resize_recompute_scale_factor": False}

    # Read one deep entry back without building the 72 M-parameter model again (load_model has its own tests).
    with safe_open(tmp_path / "out" / "cityscapes_sota.safetensors", framework="pt") as weights:
        actual = weights.get_tensor("backbone.stage4.2.fuse_layers.3.0.2.1.running_var")
        assert len(list(weights.keys())) == 1903
    expected = state["ocrnet.backbone.st4.stage_st4_3.fuse_func.residual_st4_3_layer_4_1_3._batch_norm._variance"]
    assert torch.equal(actual, torch.from_numpy(expected))


def test_nvidia_layout_of_a_small_variant_is_recognised(tmp_path, capsys):
    model = create_model("mscale_ocr_hrnet_w18_small", num_classes=7)
    source = tmp_path / "nvidia.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, source)

    assert main(["convert-weights", str(source), str(tmp_path / "small")]) == 0

    assert "mscale_ocr_hrnet_w18_small with 7 classes" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "small.json").read_text())
    assert sidecar["class_names"] == [f"class_{i}" for i in range(7)] and len(sidecar["palette"]) == 7
    assert sidecar["model_kwargs"] == {}  # NVIDIA's own resize is the model default


def test_convert_weights_reports_a_class_count_mismatch(tmp_path, capsys):
    model = create_model("mscale_ocr_hrnet_w18_small", num_classes=7)
    source = tmp_path / "nvidia.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, source)

    assert main(["convert-weights", str(source), str(tmp_path / "x"), "--num-classes", "19"]) == 2

    error = capsys.readouterr().err
    assert "nvidia.pth" in error and "ocr.cls_head.weight" in error
    assert not list(tmp_path.glob("x*"))


def test_list_models_prints_every_model(capsys):
    assert main(["list-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    w48 = next(line for line in lines if line.startswith("mscale_ocr_hrnet_w48 "))
    assert "72.14 M" in w48  # the released NVIDIA checkpoint's 72,143,430 parameters


@pytest.mark.parametrize("flag", ["--help"])
def test_convert_weights_help(flag, capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert-weights", flag])
    assert info.value.code == 0
    assert "--from" in capsys.readouterr().out


def test_nvidia_mapillary_release_layout_converts_strictly_with_the_vistas_class_table(tmp_path, capsys):
    """NVIDIA's Mapillary model (fast-rattlesnake) is the Cityscapes release's layout with 65 output classes."""
    from parity import nvidia_filled_checkpoint

    from attnseg.data.mapillary import VISTAS_CLASSES, VISTAS_PALETTE

    state = {key: (torch.randn(65, *value.shape[1:]) * 0.02 if value.ndim and value.shape[0] == 19 else value)
             for key, value in nvidia_filled_checkpoint().items()}  # fmt: skip
    assert sum(1 for value in state.values() if value.ndim and value.shape[0] == 65) >= 4  # classifier weights+biases
    source = tmp_path / "mapillary_ocrnet.HRNet_Mscale_fast-rattlesnake.pth"
    torch.save({"state_dict": state, "epoch": 200}, source)

    assert main(["convert-weights", str(source), str(tmp_path / "vistas")]) == 0
    out = capsys.readouterr().out
    assert "mscale_ocr_hrnet_w48 with 65 classes" in out and "(strict)" in out
    sidecar = json.loads((tmp_path / "vistas.json").read_text())
    assert sidecar["class_names"] == list(VISTAS_CLASSES[:65])
    assert sidecar["palette"] == [list(color) for color in VISTAS_PALETTE[:65]]

    # A v2.0 config names another class count: refused, nothing written.
    labels = [{"readable": f"c{i}", "color": [i, i, i], "evaluate": True} for i in range(123)]
    (tmp_path / "config_v2.0.json").write_text(json.dumps({"labels": labels}))
    assert main(["convert-weights", str(source), str(tmp_path / "v2"), "--classes-from",
                 str(tmp_path / "config_v2.0.json")]) == 2  # fmt: skip
    assert "123 evaluated classes, but the checkpoint has 65" in capsys.readouterr().err
    assert not list(tmp_path.glob("v2.*"))
