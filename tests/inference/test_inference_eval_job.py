"""`attnseg.inference.eval_job`: the eval command's work as library calls (model loading, writers, the run)."""

import numpy as np
import pytest
import torch
from torch import nn

from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, fallback_class_table
from attnseg.errors import ConfigError, DatasetError
from attnseg.inference.eval_job import EvalModel, EvalOutputs, load_eval_model, run_evaluation
from attnseg.inference.evaluate import InferenceRecipe
from attnseg.models.outputs import SegmentationOutput
from attnseg.weights import save_checkpoint

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
NAMES = ["aachen_000000_000019", "bonn_000002_000007"]


class Channel0Classes(nn.Module):
    """Class k wherever channel 0 is closest to k (19 classes)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        centres = torch.arange(19, dtype=x.dtype).view(1, -1, 1, 1)
        return SegmentationOutput(logits=-self.scale * (x[:, :1] - centres) ** 2)


def _batches(height=6, width=10):
    labels = torch.randint(0, 19, (1, height, width), generator=torch.Generator().manual_seed(0))
    image = labels.float().unsqueeze(1).expand(1, 3, height, width).clone()
    return [{"image": image, "label": labels, "name": [name]} for name in NAMES]


def test_submission_size_comes_from_the_predictions(tmp_path):
    outputs = EvalOutputs(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, MEAN, STD, submission_dir=tmp_path / "sub")
    model = EvalModel(Channel0Classes(), list(CITYSCAPES_CLASSES), CITYSCAPES_PALETTE, "channel0")
    run = run_evaluation(model, _batches(), InferenceRecipe(), outputs=outputs, progress=False)
    assert run.metrics.acc == pytest.approx(1.0) and run.metrics.num_images == 2 and run.seconds > 0
    assert outputs.sizes == [(6, 10), (6, 10)]
    assert outputs.check_submission(None, "val") == 2  # 6x10 PNGs expected: no Cityscapes 1024x2048 assumed
    outputs.sizes[0] = (1024, 2048)
    with pytest.raises(DatasetError, match="1024"):
        outputs.check_submission(None, "val")


def test_outputs_refuse_a_submission_without_cityscapes_classes(tmp_path):
    names, palette = fallback_class_table(7)
    assert names[:2] == ["class_0", "class_1"] and palette.shape == (7, 3) and palette.dtype == np.uint8
    with pytest.raises(ConfigError, match="19-class"):
        EvalOutputs(names, palette, MEAN, STD, submission_dir=tmp_path / "sub")
    outputs = EvalOutputs(names, palette, MEAN, STD, dump_dir=tmp_path / "dump", dump_kinds=["color", "labelIds"])
    assert outputs.callbacks[0].kinds == ("color",) and outputs.check_submission(None, "val") is None
    assert not EvalOutputs(names, palette, MEAN, STD)  # no writers: evaluate_model gets no callback


def test_load_eval_model_reads_a_native_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "best", Channel0Classes(), "channel0", {}, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE,
                    MEAN, STD)  # fmt: skip

    def never():
        raise AssertionError("a native checkpoint rebuilds its own model")

    from attnseg.models import MODEL_BUILDERS

    MODEL_BUILDERS["channel0"] = lambda num_classes=19: Channel0Classes()
    try:
        model = load_eval_model(tmp_path / "best", torch.device("cpu"), build_model=never, model_name="x",
                                num_classes=19)  # fmt: skip
    finally:
        MODEL_BUILDERS.pop("channel0")
    assert model.class_names == list(CITYSCAPES_CLASSES) and model.mean == MEAN and model.std == STD
    assert "channel0" in model.description and not model.module.training
