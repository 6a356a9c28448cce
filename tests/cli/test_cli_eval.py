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


def _image_miou(prediction, label, num_classes=19):
    """Mean IoU over the classes in the image's ground truth or prediction, counted here without attnseg."""
    valid = label != 255
    ious = []
    for c in range(num_classes):
        union = np.sum(((label == c) | (prediction == c)) & valid)
        if union:
            ious.append(np.sum((label == c) & (prediction == c) & valid) / union)
    return float(np.mean(ious))


def test_eval_dump_topn_confidence_and_json(setup, capsys):
    import cv2

    from attnseg.data.labels import id_to_train_id

    root, work, config = setup
    dump = work / "topn_dump"
    code = main(["eval", str(config), "--weights", str(work / "run"), "--dump", str(dump), "--dump-kinds",
                 "trainIds,confidence", "--dump-topn", "1", "--json", str(work / "m3.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    scores = {}
    for path in sorted((dump / "trainIds").glob("*.png")):
        truth = root / "gtFine" / "val" / path.stem.split("_")[0] / f"{path.stem}_gtFine_labelIds.png"
        scores[path.stem] = _image_miou(cv2.imread(str(path), cv2.IMREAD_UNCHANGED),
                                        id_to_train_id[cv2.imread(str(truth), cv2.IMREAD_UNCHANGED)])
        confidence = cv2.imread(str(dump / "confidence" / path.name), cv2.IMREAD_UNCHANGED)
        assert confidence.shape == (64, 128) and confidence.min() >= 255 // 19  # top of 19 probabilities >= 1/19
    assert len(scores) == 2 and len(set(scores.values())) == 2
    worst = min(scores, key=scores.get)
    files = [p.name for p in (dump / "topn" / "overall").iterdir()]
    assert files == [f"01_{worst}.png"]
    index = json.loads((dump / "topn" / "topn.json").read_text())
    assert index["overall"][0]["iou"] == pytest.approx(scores[worst], abs=1e-12) and index["n"] == 1
    assert json.loads((work / "m3.json").read_text())["worstImages"] == index["overall"]
    table = out[out.index("worst 1 images"):].splitlines()
    assert table[2].split() == ["1", f"{scores[worst]:.4f}", index["overall"][0]["image"]]
    strip = cv2.imread(str(dump / "topn" / "overall" / files[0]))
    assert strip.shape == (64, 3 * 128, 3)
    assert sorted(p.name for p in dump.iterdir()) == ["confidence", "topn", "trainIds"]
