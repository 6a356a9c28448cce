"""Quantization-aware fine-tuning: the distillation loss, what each parameter choice trains, and that training lowers
the loss of a model NNCF quantized (the end-to-end `attnseg quantize --finetune-steps` is in
test_export_openvino_int8.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnseg.errors import AttnsegError
from attnseg.export.quantize import QuantizationSettings
from attnseg.export.quantize_finetune import (
    FinetuneSettings, _trained_parameters, check_torch_backend_settings, distillation_loss, finetune,
)  # fmt: skip


def test_distillation_loss_is_the_per_pixel_kl_divergence_from_the_teacher():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    expected = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True,
                        reduction="sum") / (2 * 3 * 4)  # fmt: skip
    assert distillation_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # Shifting all scores of a pixel changes nothing: only the class distribution counts.
    assert distillation_loss(teacher + 3.0, teacher).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(steps=-1), "fine-tuning steps must be >= 0"),
        (dict(learning_rate=0.0), "fine-tuning learning rate must be > 0"),
        (dict(batch_size=0), "fine-tuning batch size must be >= 1"),
        (dict(parameters="biases"), "fine-tuning parameters 'biases': choose from all, weights, ranges"),
    ],
)
def test_finetune_settings_refuse_what_cannot_train(settings, message):
    with pytest.raises(AttnsegError, match=message):
        FinetuneSettings(**settings)


def test_the_torch_backend_refuses_full_bias_correction_and_float_scales():
    check_torch_backend_settings(QuantizationSettings(bias_correction="none", keep_float=("ocr",)))
    with pytest.raises(AttnsegError, match="has only the fast bias correction"):
        check_torch_backend_settings(QuantizationSettings(bias_correction="full"))
    with pytest.raises(AttnsegError, match="not available with fine-tuning"):
        check_torch_backend_settings(QuantizationSettings(float_scales=(0.5,)))


class TinySegmenter(nn.Module):
    """Two 3x3 convolutions with batch norm and a 1x1 classifier: quantized by NNCF in a second."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())  # fmt: skip
        self.classifier = nn.Conv2d(8, 4, 1)

    def forward(self, images):
        return self.classifier(self.body(images))


@pytest.fixture
def quantized_tiny():
    nncf = pytest.importorskip("nncf")
    torch.manual_seed(0)
    teacher = TinySegmenter().eval()
    images = [torch.randn(1, 3, 16, 16) for _ in range(4)]
    quantized = nncf.quantize(teacher, nncf.Dataset(images), subset_size=4)
    return teacher, quantized, images


def test_each_parameter_choice_trains_what_it_names(quantized_tiny):
    _, quantized, _ = quantized_tiny
    weights = _trained_parameters(quantized, "weights")
    assert len(weights) == 3 and all(parameter.ndim == 4 for parameter in weights)
    ranges = _trained_parameters(quantized, "ranges")
    range_ids = {id(parameter) for parameter in ranges}
    names = [name for name, parameter in quantized.named_parameters() if id(parameter) in range_ids]
    # One quantizer per convolution's weights and per activation, each with its range (NNCF's symmetric: a scale).
    assert len(ranges) == 3 + 3 and all(name.endswith("_scale_param_storage") for name in names)
    # Only the chosen tensors are left trainable.
    assert {id(p) for p in quantized.parameters() if p.requires_grad} == range_ids
    everything = _trained_parameters(quantized, "all")
    assert len(everything) > len(weights) + len(ranges)


def test_finetuning_lowers_the_distillation_loss_and_freezes_the_model_after(quantized_tiny):
    teacher, quantized, images = quantized_tiny
    before = [parameter.detach().clone() for parameter in quantized.parameters()]
    losses = finetune(quantized, teacher, images, FinetuneSettings(steps=60, learning_rate=3e-3, batch_size=2))
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert not any(parameter.requires_grad for parameter in quantized.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, quantized.parameters())]
    assert any(changed)
    # Batch norm kept its running statistics (the model trains in eval mode).
    running = [module.running_mean for module in quantized.modules() if isinstance(module, nn.BatchNorm2d)]
    assert torch.equal(running[0], teacher.body[1].running_mean)
