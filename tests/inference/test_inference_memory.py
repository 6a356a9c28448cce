import cv2
import numpy as np
import pytest
import torch
from torch import nn

from attnseg.cli.main import main
from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.errors import ConfigError
from attnseg.inference.evaluate import eval_mode, model_forward, predict_scores
from attnseg.inference.memory import (
    MemoryModel,
    available_memory_bytes,
    format_bytes,
    measure_peak_bytes,
    parse_memory_size,
)
from attnseg.inference.predictor import Predictor
from attnseg.inference.sliding import slide_inference
from attnseg.models import MODEL_BUILDERS, create_model
from attnseg.models.outputs import SegmentationOutput
from attnseg.weights import save_checkpoint

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


class WideNet(nn.Module):
    """Activations (32 channels) dominate the 19-class output, as in real networks."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x):
        return SegmentationOutput(logits=self.head(torch.relu(self.conv(x))))


def _predictor(model, **kwargs):
    return Predictor(model, mean=MEAN, std=STD, class_names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE,
                     model=model, **kwargs)


def test_parse_memory_size():
    assert parse_memory_size("4G") == 4 * 2**30
    assert parse_memory_size("512M") == 512 * 2**20
    assert parse_memory_size("1.5GiB") == 3 * 2**29
    assert parse_memory_size("800000") == 800000
    assert parse_memory_size("64k") == 65536
    for bad in ("", "4X", "-1G", "G", "0"):
        with pytest.raises(ConfigError, match="memory size"):
            parse_memory_size(bad)
    assert format_bytes(3 * 2**29) == "1.5 GiB"


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n")
    assert available_memory_bytes("cpu", meminfo) == 8000000 * 1024
    assert available_memory_bytes("cpu") > 0  # this machine: /proc/meminfo or sysconf


def test_tracker_measures_a_known_peak():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    image = torch.randn(1, 3, 40, 50)
    # conv output and ReLU output (16 channels each) are alive together; the input is not counted
    assert measure_peak_bytes(net, image) == 2 * 16 * 40 * 50 * 4


def test_fit_recovers_linear_and_quadratic_growth():
    quadratic = MemoryModel.fit([(100, 100 * 7 + 100**2 * 0.5), (400, 400 * 7 + 400**2 * 0.5)], 19)
    assert quadratic.linear == pytest.approx(7) and quadratic.quadratic == pytest.approx(0.5)
    # a fixed overhead would give a negative quadratic term: the larger per-pixel rate is kept instead
    overhead = MemoryModel.fit([(100, 1000 + 100 * 7), (400, 1000 + 400 * 7)], 19)
    assert overhead.quadratic == 0 and overhead.linear == pytest.approx(17)


@pytest.mark.parametrize(
    "name, scales, multi_scale, flip",
    [("wide", (1.0,), "hierarchical", False), ("wide", (0.75, 1.25), "average", True),
     ("psanet_r18_narrow", (1.0,), "hierarchical", False)],
)  # fmt: skip
def test_estimate_is_close_above_the_measured_peak(name, scales, multi_scale, flip):
    model = WideNet() if name == "wide" else create_model(name, num_classes=19)
    predictor = _predictor(model.eval(), scales=scales, multi_scale=multi_scale, flip=flip)
    memory = predictor.memory_model()
    image = torch.randn(1, 3, 96, 136)
    forward = model_forward(model, predictor.recipe)
    with eval_mode(model):
        measured = measure_peak_bytes(lambda x: predict_scores(forward, x, predictor.recipe, 19), image)
        estimate = memory.whole_bytes(96, 136)
        assert measured <= estimate <= 2.0 * measured
        crop, stride = (48, 64), (32, 48)
        slide_recipe = predictor.recipe.__class__(**{**predictor.recipe.__dict__, "mode": "slide",
                                                     "crop_size": crop, "stride": stride})  # fmt: skip
        measured = measure_peak_bytes(lambda x: predict_scores(forward, x, slide_recipe, 19), image)
        estimate = memory.slide_bytes(96, 136, crop)
        assert measured <= estimate <= 2.0 * measured


def test_predictor_slides_when_over_budget_and_agrees_with_whole():
    torch.manual_seed(3)
    model = WideNet().eval()
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    whole = _predictor(model, max_memory_bytes=None)
    expected = whole(image)
    assert whole.last_plan.mode == "whole"
    messages = []
    small = _predictor(model, max_memory_bytes=20 * 2**20, log=messages.append)
    labels = small(image)
    plan = small.last_plan
    assert plan.automatic and plan.mode == "slide" and plan.estimate_bytes > 20 * 2**20
    assert small.memory_model().slide_bytes(256, 256, plan.crop_size) <= 20 * 2**20 and plan.crop_size[0] < 256
    assert len(messages) == 1 and "memory budget: sliding" in messages[0]
    assert (labels == expected).mean() > 0.97
    # explicit windows are exactly `slide_inference`
    explicit = _predictor(model, slide=True, crop_size=(96, 128), stride=(64, 64))
    tensor = explicit.preprocess(image)
    with torch.inference_mode():
        direct = slide_inference(model, tensor, (96, 128), (64, 64), 19).max(1).indices[0].numpy()
    assert np.array_equal(explicit(image), direct) and not explicit.last_plan.automatic
    # not even the full-size score maps fit: a clear error instead of an allocation failure
    with pytest.raises(ConfigError, match="score maps alone"):
        _predictor(model, max_memory_bytes=2**20)(image)


@pytest.fixture()
def wide_weights(tmp_path):
    MODEL_BUILDERS["predtrust_wide"] = lambda num_classes=19: WideNet(num_classes)
    torch.manual_seed(2)
    save_checkpoint(tmp_path / "w" / "model", WideNet(), "predtrust_wide", {}, CITYSCAPES_CLASSES,
                    CITYSCAPES_PALETTE, MEAN, STD)
    yield tmp_path / "w" / "model"
    MODEL_BUILDERS.pop("predtrust_wide", None)


def test_cli_switches_to_windows_under_small_max_memory(tmp_path, wide_weights, capsys):
    image = tmp_path / "big.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    assert main(["predict", str(wide_weights), str(image), "--out", str(tmp_path / "whole"), "--no-progress",
                 "--device", "cpu"]) == 0
    assert "sliding" not in capsys.readouterr().err
    assert main(["predict", str(wide_weights), str(image), "--out", str(tmp_path / "slide"), "--no-progress",
                 "--device", "cpu", "--max-memory", "20M"]) == 0
    err = capsys.readouterr().err
    assert "big.png: a whole-image pass needs about" in err and "sliding" in err and "windows" in err
    whole = cv2.imread(str(tmp_path / "whole" / "big_labels.png"), cv2.IMREAD_UNCHANGED)
    slide = cv2.imread(str(tmp_path / "slide" / "big_labels.png"), cv2.IMREAD_UNCHANGED)
    assert whole.shape == slide.shape == (256, 256) and (whole == slide).mean() > 0.97
    # explicit windows and a bad size are options like eval's
    assert main(["predict", str(wide_weights), str(image), "--out", str(tmp_path / "explicit"), "--no-progress",
                 "--slide", "--crop", "128", "--stride", "96,96"]) == 0
    explicit = cv2.imread(str(tmp_path / "explicit" / "big_labels.png"), cv2.IMREAD_UNCHANGED)
    assert (explicit == whole).mean() > 0.97
    assert main(["predict", str(wide_weights), str(image), "--out", str(tmp_path / "x"), "--max-memory", "lots"]) == 2
    assert "memory size 'lots'" in capsys.readouterr().err
