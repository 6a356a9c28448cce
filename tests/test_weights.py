"""attnseg.weights: safe reading of foreign checkpoints, layout detection, loading reports, native checkpoints."""

from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import nvidia_reference_entries, paddle_reference_keys
from torch import nn

from attnseg.errors import WeightsError
from attnseg.models import MODEL_BUILDERS, create_model
from attnseg.models.backbones.hrnet import convert_hrnet_imagenet_state_dict
from attnseg.models.mscale.paddle import convert_paddle_state_dict, paddle_key_to_torch
from attnseg.weights import formats
from attnseg.weights import (
    FORMATS,
    SOURCES,
    CheckpointFormat,
    checkpoint_paths,
    convert_state_dict,
    detect_source,
    load_model,
    load_pretrained,
    load_weights,
    paddle_family,
    read_checkpoint_file,
    read_sidecar,
    save_checkpoint,
)

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


class TinyNet(nn.Module):
    """Conv-BN-conv network standing in for a registered model in the native checkpoint tests."""

    def __init__(self, num_classes: int = 3, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(torch.relu(self.bn(self.conv(x))))


def tiny_net(*, num_classes: int = 3, width: int = 4) -> TinyNet:
    return TinyNet(num_classes, width)


@pytest.fixture
def registered_tiny(monkeypatch):
    monkeypatch.setitem(MODEL_BUILDERS, "tiny_test_net", tiny_net)
    return "tiny_test_net"


def _randomised(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model


# ---------------------------------------------------------------------------------------------------------
# .pdparams reading
# ---------------------------------------------------------------------------------------------------------
class _RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_pdparams_with_os_system_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pdparams"
    content = {"conv.weight": np.zeros(3, np.float32), "x": _RunsCommand(marker)}
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    with pytest.raises(WeightsError) as info:
        read_checkpoint_file(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message  # 'posix.system' on Linux
    assert not marker.exists()


def test_pdparams_with_builtin_eval_is_refused(tmp_path):
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"a": _CallsEval()}))
    with pytest.raises(WeightsError, match=r"builtins\.eval"):
        read_checkpoint_file(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pdparams_round_trip_of_numpy_arrays(tmp_path, protocol):
    rng = np.random.default_rng(0)
    arrays = {
        "backbone.conv_layer1_1._conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "backbone.conv_layer1_1._batch_norm._variance": rng.random(4).astype(np.float32),
        "head.cls_head.bias": rng.standard_normal(5),  # float64 stays float64
        "step": np.array(7, dtype=np.int64),
    }
    content = OrderedDict(arrays)
    content["StructuredToParameterName@@"] = {key: f"param_{i}" for i, key in enumerate(arrays)}
    content["tensor_as_tuple"] = ("create_parameter_0.w_0", np.arange(6, dtype=np.float32).reshape(2, 3))
    path = tmp_path / "model.pdparams"
    data = pickle.dumps(content, protocol=protocol)
    if protocol == 2:  # as written by numpy 1.x, which released .pdparams files were made with
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray" in data
    path.write_bytes(data)

    state = read_checkpoint_file(path)

    assert set(state) == set(arrays) | {"tensor_as_tuple"}
    for key, value in arrays.items():
        assert state[key].dtype == value.dtype
        np.testing.assert_array_equal(state[key], value)
    np.testing.assert_array_equal(state["tensor_as_tuple"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_pdparams_that_is_not_a_dict_is_rejected(tmp_path):
    path = tmp_path / "list.pdparams"
    path.write_bytes(pickle.dumps([np.zeros(2)]))
    with pytest.raises(WeightsError, match="expected a dict"):
        read_checkpoint_file(path)


def test_truncated_pdparams_is_reported(tmp_path):
    path = tmp_path / "cut.pdparams"
    path.write_bytes(pickle.dumps({"a": np.zeros(100)})[:40])
    with pytest.raises(WeightsError, match="cut.pdparams"):
        read_checkpoint_file(path)


# ---------------------------------------------------------------------------------------------------------
# torch / safetensors reading
# ---------------------------------------------------------------------------------------------------------
def test_pth_training_checkpoint_is_unwrapped(tmp_path):
    state = {"module.conv.weight": torch.ones(2, 3, 1, 1)}
    path = tmp_path / "best.pth"
    torch.save({"state_dict": state, "epoch": 3, "command": "python train.py", "mean_iu": 0.8}, path)
    loaded = read_checkpoint_file(path)
    assert list(loaded) == ["module.conv.weight"]
    assert torch.equal(loaded["module.conv.weight"], state["module.conv.weight"])


def test_pth_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsCommand(marker)}, path)
    with pytest.raises(WeightsError, match="evil.pth"):
        read_checkpoint_file(path)
    assert not marker.exists()


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such checkpoint"):
        read_checkpoint_file(tmp_path / "absent.pth")
    other = tmp_path / "weights.h5"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown checkpoint suffix"):
        read_checkpoint_file(other)


# ---------------------------------------------------------------------------------------------------------
# Detection and conversion
# ---------------------------------------------------------------------------------------------------------
def _keys_only(keys) -> dict[str, np.ndarray]:
    return {key: np.zeros(1, np.float32) for key in keys}


def test_detect_source_on_reference_layouts():
    nvidia = [entry["checkpoint_key"] for entry in nvidia_reference_entries()]
    assert detect_source(_keys_only(nvidia)) == "nvidia"
    assert detect_source(_keys_only(k.removeprefix("module.") for k in nvidia)) == "native"
    assert detect_source(_keys_only(k for k, _ in paddle_reference_keys("mscale_ocrnet"))) == "paddle"
    assert detect_source(_keys_only(k for k, _ in paddle_reference_keys("psanet"))) == "paddle"
    semseg = ["module.layer0.0.weight", "module.layer0.1.running_mean", "module.layer4.2.conv3.weight",
              "module.psa.attention.0.weight", "module.cls.4.weight", "module.aux.4.bias"]  # fmt: skip
    assert detect_source(_keys_only(semseg)) == "semseg"
    imagenet = ["conv1.weight", "bn1.running_var", "transition1.0.0.weight", "stage4.2.fuse_layers.0.1.0.weight",
                "incre_modules.0.0.conv1.weight", "classifier.weight"]  # fmt: skip
    assert detect_source(_keys_only(imagenet)) == "hrnet_imagenet"
    for name in ("psanet_r18_narrow", "mscale_ocr_hrnet_w18_small"):  # our own layouts, as written by save_checkpoint
        with torch.device("meta"):
            assert detect_source(create_model(name).state_dict()) == "native", name


def test_paddle_keys_map_one_to_one_onto_the_nvidia_layout():
    nvidia = {entry["key"]: tuple(entry["shape"]) for entry in nvidia_reference_entries()}
    mapped = {}
    for key, shape in paddle_reference_keys("mscale_ocrnet"):
        target = paddle_key_to_torch(key)
        assert target not in mapped, f"{key} and {mapped[target]} both map to {target}"
        assert nvidia[target] == shape, f"{key} -> {target}: shape {shape} != {nvidia[target]}"
        mapped[target] = key
    counters = {key for key in nvidia if key.endswith(".num_batches_tracked")}
    assert set(mapped) | counters == set(nvidia)


def test_paddle_converter_checks_shapes_and_adds_bn_counters():
    prefix = "ocrnet.head.aux_head.0"
    state = {
        f"{prefix}._conv.weight": np.ones((6, 6, 1, 1), np.float32),
        f"{prefix}._conv.bias": np.zeros(6, np.float32),
        f"{prefix}._batch_norm.weight": np.ones(6, np.float32),
        f"{prefix}._batch_norm.bias": np.zeros(6, np.float32),
        f"{prefix}._batch_norm._mean": np.full(6, 0.5, np.float32),
        f"{prefix}._batch_norm._variance": np.full(6, 2.0, np.float32),
    }
    converted = convert_paddle_state_dict(state)
    assert converted["ocr.aux_head.1.0.running_var"].tolist() == [2.0] * 6
    assert converted["ocr.aux_head.1.0.num_batches_tracked"].item() == 0
    assert converted["ocr.aux_head.0.weight"].shape == (6, 6, 1, 1)
    # keys without the MscaleOCRNet "ocrnet." prefix (a stand-alone OCRNetNV / pretrained file) map the same way
    assert set(convert_paddle_state_dict({k.removeprefix("ocrnet."): v for k, v in state.items()})) == set(converted)

    state[f"{prefix}._batch_norm._mean"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="running_mean"):
        convert_paddle_state_dict(state)


def test_unknown_paddle_key_is_reported_with_its_name():
    state = {"ocrnet.head.mystery._conv.weight": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(WeightsError, match="ocrnet.head.mystery"):
        convert_state_dict(state, "paddle")
    with pytest.raises(WeightsError, match="unknown weights source"):
        convert_state_dict(state, "caffe")


def test_imagenet_hrnet_keeps_backbone_and_drops_classification_neck():
    state = {
        "conv1.weight": torch.ones(64, 3, 3, 3),
        "stage4.2.branches.3.3.bn2.running_mean": torch.zeros(384),
        "incre_modules.0.0.conv1.weight": torch.ones(32, 48, 1, 1),
        "final_layer.0.weight": torch.ones(2048, 1024, 1, 1),
        "classifier.weight": torch.ones(1000, 2048),
    }
    converted = convert_hrnet_imagenet_state_dict(state)
    assert set(converted) == {"backbone.conv1.weight", "backbone.stage4.2.branches.3.3.bn2.running_mean"}


def test_formats_table_covers_every_source_and_its_converters_live_beside_the_models():
    names = [record.name for record in FORMATS]
    assert len(names) == len(set(names))
    assert {record.source for record in FORMATS} | {"native"} == set(SOURCES)
    for record in FORMATS:
        for function in (record.layout, record.recognise, record.convert):
            if function.__name__ != "_always":
                assert function.__module__.startswith("attnseg.models."), (record.name, function.__module__)
    assert {record.family for record in FORMATS if record.source == "paddle"} == {"mscale_ocr", "psanet"}


def test_detection_and_conversion_read_the_formats_table(monkeypatch):
    def is_toy(keys):
        return any(key.startswith("toy.") for key in keys)

    def convert_toy(state):
        return {key.replace("toy.", "head.", 1): value * 2 for key, value in state.items()}

    toy = CheckpointFormat("toy_semseg", "semseg", "psanet", is_toy, is_toy, convert_toy, "toy release")
    state = {"toy.weight": np.ones(2, np.float32)}
    assert detect_source(state) == "native"
    monkeypatch.setattr(formats, "FORMATS", (toy, *formats.FORMATS))
    assert detect_source(state) == "semseg"
    converted = convert_state_dict(state, "semseg")
    assert list(converted) == ["head.weight"] and converted["head.weight"].tolist() == [2.0, 2.0]


def test_paddle_state_dict_of_no_known_model_is_refused_by_name():
    state = {"backbone.conv1_1._batch_norm._mean": np.zeros(2, np.float32)}  # a bare Paddle ResNet
    assert detect_source(state) == "paddle"
    with pytest.raises(WeightsError, match="PaddleSeg state dict belongs to neither MscaleOCRNet/OCRNet nor PSANet"):
        convert_state_dict(state, "paddle")
    assert paddle_family(_keys_only(k for k, _ in paddle_reference_keys("psanet"))) == "psanet"


def test_the_paddle_batch_norm_names_are_written_once():
    package = Path(__file__).resolve().parents[1] / "src" / "attnseg"
    holders = [path.relative_to(package).as_posix() for path in sorted(package.rglob("*.py"))
               if '"_variance": "running_var"' in path.read_text(encoding="utf-8")]
    assert holders == ["models/state_dicts.py"]


# ---------------------------------------------------------------------------------------------------------
# Loading into models
# ---------------------------------------------------------------------------------------------------------
def test_load_weights_strict_and_pretrained_with_other_class_count(tmp_path, capsys):
    source = _randomised(TinyNet(num_classes=5))
    path = tmp_path / "five_classes.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)

    exact = TinyNet(num_classes=5)
    with pytest.raises(WeightsError, match="unexpected in checkpoint"):
        load_weights(exact, path)  # DataParallel's module. prefix is only removed by the NVIDIA/semseg converters

    bare = tmp_path / "bare.pth"
    torch.save(source.state_dict(), bare)
    report = load_weights(exact, bare)
    assert report.complete and report.source == "native"
    assert torch.equal(exact.conv.weight, source.conv.weight)

    three = TinyNet(num_classes=3)
    with pytest.raises(WeightsError, match="cls.weight"):
        load_weights(three, bare)
    report = load_pretrained(three, bare)
    assert sorted(k for k, _, _ in report.shape_mismatches) == ["cls.bias", "cls.weight"]
    assert torch.equal(three.bn.running_var, source.bn.running_var)
    assert "shape mismatches" in capsys.readouterr().out


def test_imagenet_hrnet_initialises_only_the_backbone(tmp_path, capsys):
    model = create_model("mscale_ocr_hrnet_w18_small", num_classes=19)
    backbone = _randomised(create_model("mscale_ocr_hrnet_w18_small", num_classes=19)).backbone
    imagenet = {key: value for key, value in backbone.state_dict().items()}
    imagenet["classifier.weight"] = torch.ones(1000, 2048)  # the classification neck has no counterpart
    imagenet["incre_modules.0.0.conv1.weight"] = torch.ones(32, 18, 1, 1)
    path = tmp_path / "hrnet_w18_small_imagenet.pth"
    torch.save(imagenet, path)

    report = load_pretrained(model, path)

    assert report.source == "hrnet_imagenet"
    assert set(report.loaded) == {f"backbone.{key}" for key in backbone.state_dict()}
    assert {key.split(".")[0] for key in report.missing} == {"ocr", "scale_attn"}
    assert not report.unexpected and not report.shape_mismatches
    assert torch.equal(model.backbone.conv1.weight, backbone.conv1.weight)
    assert "missing from checkpoint" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# Native checkpoints
# ---------------------------------------------------------------------------------------------------------
def test_native_checkpoint_round_trip(tmp_path, registered_tiny):
    model = _randomised(tiny_net(num_classes=3, width=6))
    names = ["road", "car", "sky"]
    palette = np.array([[128, 64, 128], [0, 0, 142], [70, 130, 180]], dtype=np.uint8)
    weights, sidecar_path = save_checkpoint(
        tmp_path / "ckpt" / "tiny.safetensors", model, registered_tiny, {"width": 6}, names, palette,
        IMAGENET_MEAN, IMAGENET_STD, extra={"source": "unit test"},
    )  # fmt: skip

    assert weights == tmp_path / "ckpt" / "tiny.safetensors"
    assert sidecar_path == tmp_path / "ckpt" / "tiny.json"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["tiny.json", "tiny.safetensors"]  # no temp files
    data = json.loads(sidecar_path.read_text())
    assert data["model"] == registered_tiny and data["num_classes"] == 3 and data["model_kwargs"] == {"width": 6}
    assert data["preprocessing"] == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "value_range": [0, 255],
                                     "channel_order": "RGB"}  # fmt: skip
    assert data["palette"][1] == [0, 0, 142] and data["class_names"] == names

    for path in (tmp_path / "ckpt" / "tiny", sidecar_path, weights):
        loaded, sidecar = load_model(path)
        assert not loaded.training
        assert sidecar.class_names == names and sidecar.extra == {"source": "unit test"}
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    assert read_sidecar(weights).mean == IMAGENET_MEAN


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, registered_tiny, monkeypatch):
    import safetensors.torch

    args = (registered_tiny, {}, ["a", "b", "c"], [[1, 2, 3]] * 3, IMAGENET_MEAN, IMAGENET_STD)
    save_checkpoint(tmp_path / "m", tiny_net(), *args)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "m", _randomised(tiny_net()), *args)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_save_checkpoint_validates_its_metadata(tmp_path, registered_tiny):
    with pytest.raises(ValueError, match="0-255"):
        save_checkpoint(tmp_path / "m", tiny_net(), registered_tiny, {}, ["a", "b", "c"], [[1, 2, 3]] * 3,
                        [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # fmt: skip
    with pytest.raises(ValueError, match="palette"):
        save_checkpoint(tmp_path / "m", tiny_net(), registered_tiny, {}, ["a", "b", "c"], [[1, 2, 3]] * 2,
                        IMAGENET_MEAN, IMAGENET_STD)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_load_model_errors_name_the_file(tmp_path, registered_tiny):
    with pytest.raises(WeightsError, match="sidecar not found"):
        load_model(tmp_path / "absent")
    save_checkpoint(tmp_path / "m", tiny_net(), registered_tiny, {}, ["a", "b", "c"], [[1, 2, 3]] * 3,
                    IMAGENET_MEAN, IMAGENET_STD)  # fmt: skip
    _, sidecar = checkpoint_paths(tmp_path / "m")
    data = json.loads(sidecar.read_text())
    data["model_kwargs"] = {"width": 9}  # the weights were saved with width 4
    sidecar.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="m.safetensors"):
        load_model(tmp_path / "m")
