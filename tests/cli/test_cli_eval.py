import json

import numpy as np
import pytest
import torch
from torch import nn

from attnseg.cli.main import main
from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.metrics.cityscapes import evaluate_folder, result_metrics
from attnseg.models import MODEL_BUILDERS
from attnseg.models.outputs import SegmentationOutput
from attnseg.weights import save_checkpoint


class TinyNet(nn.Module):
    """3x3 conv: varied per-pixel classes, so the metrics compared below are not trivial."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return SegmentationOutput(logits=self.conv(x))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("cs"), num_train=0, num_val=2, height=64, width=128)
    work = tmp_path_factory.mktemp("eval")
    torch.manual_seed(3)
    MODEL_BUILDERS["h6_test_tiny"] = lambda num_classes=19: TinyNet(num_classes)
    save_checkpoint(work / "run" / "checkpoints" / "best", TinyNet(), "h6_test_tiny", {}, CITYSCAPES_CLASSES,
                    CITYSCAPES_PALETTE, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    config = work / "config.yaml"
    config.write_text(
        f"model:\n  name: h6_test_tiny\ndata:\n  root: {root}\n  num_workers: 0\neval:\n  num_workers: 0\n"
    )
    yield root, work, config
    MODEL_BUILDERS.pop("h6_test_tiny", None)


def test_eval_prints_seed_format_and_equals_score(setup, capsys):
    root, work, config = setup
    code = main(["eval", str(config), "--weights", str(work / "run"), "--dump", str(work / "dump"),
                 "--json", str(work / "metrics.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    summary = [line for line in lines if "[INFO]\t[EVAL] #Images=2 mIoU=" in line]
    assert len(summary) == 1 and " Acc=" in summary[0] and " Kappa=" in summary[0]
    assert any(line.endswith("[EVAL] Class IoU:") for line in lines)
    assert any(line.endswith("[EVAL] Class Acc:") for line in lines)
    ours = json.loads((work / "metrics.json").read_text())
    official = result_metrics(evaluate_folder(root, work / "dump" / "labelIds", "val", workers=1))
    assert np.array_equal(np.array(ours["confusionMatrix"]), official.confusion)
    assert ours["mIoU"] == pytest.approx(official.miou, abs=1e-12)
    assert ours["Acc"] == pytest.approx(official.acc, abs=1e-12)
    assert len(set(np.nonzero(official.confusion.sum(0))[0])) > 3  # the tiny model predicts several classes
    for kind in ("color", "overlay", "compare"):
        assert len(list((work / "dump" / kind).glob("*.png"))) == 2


def test_eval_recipe_flags_and_submission(setup, capsys):
    root, work, config = setup
    code = main(["eval", str(config), "eval.flip=true", "--weights", str(work / "run" / "checkpoints" / "best"),
                 "--scales", "diff:0.5:1.0:0.5", "--multi-scale", "average", "--slide", "--crop", "32,64",
                 "--stride", "24,48", "--submission", str(work / "sub"), "--json", str(work / "m2.json"),
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "ready" in out
    recipe = json.loads((work / "m2.json").read_text())["recipe"]
    assert recipe["scales"] == [0.5, 1.0] and recipe["flip"] is True and recipe["mode"] == "slide"
    assert recipe["crop_size"] == [32, 64] and recipe["stride"] == [24, 48]
    assert len(list((work / "sub").glob("*_leftImg8bit.png"))) == 2


def test_eval_config_errors_are_reported(setup, capsys):
    _, work, config = setup
    code = main(["eval", str(config), "--weights", str(work / "run"), "--scales", "0.5,1.0", "--no-progress"])
    assert code == 2
    assert "multi_scale='average'" in capsys.readouterr().err
