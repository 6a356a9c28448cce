"""One contract for every registered model (`attnseg.list_models()`): add a builder and it is tested here.

Per model: the `SegmentationOutput` fields (read by name) in train and eval mode, their shapes and dtype; a finite,
non-zero gradient on every trainable parameter after one backward of the model's training loss; BatchNorm
statistics that move in train mode only; bit-identical eval forwards; and an ONNX export whose ONNX Runtime output
equals PyTorch's (skipped only without onnx/onnxruntime).

A model needs a row in `CASES` only to narrow it, to name its training recipe or its per-scale outputs, or to list
a parameter that legitimately gets no gradient; without a row it is built with its defaults, trained with cross
entropy on every output it returns and expected to be single-scale. Sizes are the smallest the backbones take:
32x64 keeps HRNet's stride-32 branch at 1x1 at the 0.5 scale, and batch 2 gives BatchNorm two values there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attnseg.losses import CrossEntropyLoss, LossTerm, SegmentationCriterion, nvidia_criterion, psanet_criterion
from attnseg.models import SegmentationOutput, create_model, fuses_scales, list_models

NUM_CLASSES = 5
TRAIN_SHAPE = (2, 3, 32, 64)
EVAL_SHAPE = (1, 3, 32, 64)
# Two scales are the smallest hierarchical fusion (one attention map); the 2.0 scale would add 4x the compute.
EVAL_SCALES = (0.5, 1.0)
ONNX_TOLERANCE = 1e-4  # largest max|onnx - torch| / max|torch|

CriterionFactory = Callable[[SegmentationOutput], nn.Module]


def cross_entropy_on_every_output(output: SegmentationOutput) -> nn.Module:
    """The loss of a model without a recipe row: cross entropy on each logits field it returns."""
    fields = ["logits"] + (["aux_logits"] if output.aux_logits is not None else [])
    fields += [f"scale_logits[{float(scale)}]" for scale in output.scale_logits]
    return SegmentationCriterion(LossTerm(name, CrossEntropyLoss(), 1.0, name) for name in fields)


@dataclass(frozen=True)
class ModelCase:
    """How the family test builds and trains one registered model.

    Attributes:
        build_kwargs: narrowing options of the builder (never ones that change what the test checks).
        criterion: the model's training loss, built from a first output (which fields exist).
        train_scales: keys of `scale_logits` in train mode (() for a single-scale model).
        eval_scales: keys of `scale_logits` in eval mode (() for a single-scale model).
        no_gradient: parameter name -> why it legitimately gets no (or an all-zero) gradient.
    """

    build_kwargs: Mapping[str, Any] = field(default_factory=dict)
    criterion: CriterionFactory = cross_entropy_on_every_output
    train_scales: tuple[float, ...] = ()
    eval_scales: tuple[float, ...] = ()
    no_gradient: Mapping[str, str] = field(default_factory=dict)


# Narrow OCR and attention heads; HRNet and ResNet widths are fixed by the variant, so those stay as released.
_OCR_NARROW = {"ocr_mid_channels": 32, "ocr_key_channels": 16}
_MSCALE = ModelCase(
    build_kwargs={**_OCR_NARROW, "attention_channels": 16, "eval_scales": EVAL_SCALES},
    # NVIDIA's Cityscapes recipe: RMI on the joint logits, BCE on aux and on both scales' logits.
    criterion=lambda output: nvidia_criterion(rmi=True, num_classes=NUM_CLASSES),
    train_scales=(0.5, 1.0),
    eval_scales=EVAL_SCALES,
)
_OCR = ModelCase(
    build_kwargs=_OCR_NARROW,
    criterion=lambda output: nvidia_criterion(rmi=True, num_classes=NUM_CLASSES, low_scale=None, scale_weight=0.0),
)
_PSANET = ModelCase(criterion=lambda output: psanet_criterion())

# No registered model has a parameter without a gradient today (every `no_gradient` is empty): the single-scale
# OCRNet has no attention head, and MscaleOCR's attention takes part in both training scales.
CASES: dict[str, ModelCase] = {
    "mscale_ocr_hrnet_w48": _MSCALE,
    "mscale_ocr_hrnet_w32": _MSCALE,
    "mscale_ocr_hrnet_w18": _MSCALE,
    "mscale_ocr_hrnet_w18_small": _MSCALE,
    "mscale_ocr_hrnet_w18_small_v1": _MSCALE,
    "ocr_hrnet_w48": _OCR,
    "ocr_hrnet_w18_small": _OCR,
    "psanet_r50_vd": _PSANET,
    "psanet_r50": _PSANET,
    "psanet_r101": _PSANET,
    "psanet_r18_narrow": _PSANET,
}

MODELS = list_models()


def case_of(name: str) -> ModelCase:
    return CASES.get(name, ModelCase())


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, **case_of(name).build_kwargs)


def eval_forward(model: nn.Module, images: torch.Tensor) -> SegmentationOutput:
    """The eval-mode forward over `EVAL_SCALES` with the per-scale logits kept: the one multi-scale call here."""
    if fuses_scales(model):
        return model(images, scales=EVAL_SCALES, keep_scale_outputs=True)
    return model(images)


class FusedLogits(nn.Module):
    """images -> fused logits: the one-tensor module that ONNX export traces."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return eval_forward(self.model, images).logits


def scaled(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    return math.floor(shape[2] * scale), math.floor(shape[3] * scale)


def assert_output_contract(out: object, shape: tuple[int, ...], scales: tuple[float, ...]) -> None:
    """Fields by name, (N, K, H, W) float32 logits, per-scale maps at their scale's size, attention in [0, 1]."""
    assert isinstance(out, SegmentationOutput), f"expected SegmentationOutput, got {type(out).__name__}"
    batch = shape[0]
    full = (batch, NUM_CLASSES, *shape[2:])
    assert out.logits.shape == full and out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    if out.aux_logits is not None:
        assert out.aux_logits.shape == full and out.aux_logits.dtype == torch.float32
    assert set(out.scale_logits) == set(scales)
    for scale, logits in out.scale_logits.items():
        assert logits.shape == (batch, NUM_CLASSES, *scaled(shape, scale)) and logits.dtype == torch.float32
    # Hierarchical attention weighs every scale against the next larger one: a map for all but the largest.
    assert set(out.scale_attention) == set(sorted(scales)[:-1])
    for scale, attention in out.scale_attention.items():
        assert attention.shape == (batch, 1, *scaled(shape, scale)) and attention.dtype == torch.float32
        assert ((attention >= 0) & (attention <= 1)).all()


def batchnorm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers() if name.endswith("running_mean")}


def test_every_case_row_names_a_registered_model():
    assert set(CASES) <= set(MODELS), f"rows for unregistered models: {sorted(set(CASES) - set(MODELS))}"


@pytest.mark.parametrize("name", MODELS)
def test_training_step_reaches_every_parameter(name):
    check_training_step(name)


def check_training_step(name: str) -> None:
    case, model = case_of(name), build(name).train()
    images = torch.randn(TRAIN_SHAPE)
    labels = torch.randint(0, NUM_CLASSES, (TRAIN_SHAPE[0], *TRAIN_SHAPE[2:]))
    labels[:, :4] = 255  # an ignored band, as crops padded with the ignore label have
    before = batchnorm_statistics(model)
    out = model(images)
    assert_output_contract(out, TRAIN_SHAPE, case.train_scales)
    moved = [n for n, statistic in batchnorm_statistics(model).items() if not torch.equal(before[n], statistic)]
    assert moved or not before, f"{name}: a training forward must update the BatchNorm statistics"
    loss = case.criterion(out)(out, labels)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(case.no_gradient) <= set(trainable), f"stale no_gradient rows: {set(case.no_gradient) - set(trainable)}"
    reached = {n for n, p in trainable.items() if p.grad is not None and p.grad.any()}
    missing = sorted(set(trainable) - reached - set(case.no_gradient))
    assert not missing, f"{name}: no (or an all-zero) gradient for {len(missing)} parameters: {missing[:5]}"
    stale = sorted(set(case.no_gradient) & reached)
    assert not stale, f"{name}: listed without gradient but got one: {stale}"
    bad = [n for n in reached if not torch.isfinite(trainable[n].grad).all()]
    assert not bad, f"{name}: non-finite gradient for {bad[:5]}"


@pytest.mark.parametrize("name", MODELS)
def test_eval_forward_is_deterministic_and_leaves_the_model_unchanged(name):
    check_eval_forward(name)


def check_eval_forward(name: str) -> None:
    case, model = case_of(name), build(name).eval()
    images = torch.randn(EVAL_SHAPE)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        first = eval_forward(model, images)
        second = eval_forward(model, images)
    assert_output_contract(first, EVAL_SHAPE, case.eval_scales)
    for key in ("logits", "aux_logits"):
        assert (getattr(first, key) is None) == (getattr(second, key) is None)
        if getattr(first, key) is not None:
            assert torch.equal(getattr(first, key), getattr(second, key)), f"{name}: {key} differ between runs"
    for scale in first.scale_logits:
        assert torch.equal(first.scale_logits[scale], second.scale_logits[scale])
    changed = [key for key, value in model.state_dict().items() if not torch.equal(value, state[key])]
    assert not changed, f"{name}: the eval forward changed {changed[:5]}"


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"images": images.numpy()})
    return torch.from_numpy(result)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    check_onnx_export(name, tmp_path)


def check_onnx_export(name: str, tmp_path: Path) -> None:
    # The wrapper must be in eval mode itself: export restores the wrapper's mode, and a wrapper left in train mode
    # would put the model back into train mode (BatchNorm on batch statistics) after tracing it in eval mode.
    model = FusedLogits(build(name)).eval()
    images = torch.randn(EVAL_SHAPE)
    path = tmp_path / f"{name}.onnx"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            expected = model(images)
            warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
            # Without constant folding the large models export in half the time; ONNX Runtime folds on load anyway.
            torch.onnx.export(model, (images,), str(path), input_names=["images"], output_names=["logits"],
                              opset_version=17, do_constant_folding=False, dynamo=False)
        assert not model.training, "the export must leave the model in eval mode"
        actual = run_onnx(path, images)
    finally:
        path.unlink(missing_ok=True)  # up to 300 MB of weights; pytest keeps old tmp folders
    assert actual.shape == expected.shape == (EVAL_SHAPE[0], NUM_CLASSES, *EVAL_SHAPE[2:])
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= ONNX_TOLERANCE, f"{name}: ONNX Runtime differs from PyTorch by {error:.2e} (relative)"


# ---------------------------------------------------------------------------------------------------------------
# The checks themselves, on a model registered at test time (no row in CASES): what a new builder goes through
# ---------------------------------------------------------------------------------------------------------------
class ProbeNet(nn.Module):
    """Conv-BN-ReLU and a classifier at half resolution; `dead_head` adds a head that forward never uses."""

    def __init__(self, num_classes: int, dead_head: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.classifier = nn.Conv2d(8, num_classes, 1)
        self.dead = nn.Conv2d(8, num_classes, 1) if dead_head else None

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        logits = self.classifier(self.body(images))
        return SegmentationOutput(logits=nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear"))


@pytest.fixture
def register(monkeypatch):
    from attnseg.models import MODEL_BUILDERS

    def add(name: str, builder: Callable[..., nn.Module]) -> str:
        monkeypatch.setitem(MODEL_BUILDERS, name, builder)
        return name

    return add


def test_a_model_registered_without_a_row_passes_every_check(register, tmp_path):
    name = register("family_probe", lambda num_classes: ProbeNet(num_classes))
    assert name not in CASES
    check_training_step(name)
    check_eval_forward(name)
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    check_onnx_export(name, tmp_path)


def test_a_parameter_without_gradient_fails_unless_its_row_says_why(register, monkeypatch):
    name = register("family_probe_dead_head", lambda num_classes: ProbeNet(num_classes, dead_head=True))
    expected = r"no \(or an all-zero\) gradient for 2 parameters: \['dead.bias', 'dead.weight'\]"
    with pytest.raises(AssertionError, match=expected):
        check_training_step(name)
    reasons = {"dead.weight": "test: unused head", "dead.bias": "test: unused head"}
    monkeypatch.setitem(CASES, name, ModelCase(no_gradient=reasons))
    check_training_step(name)


def test_a_model_that_changes_in_eval_or_returns_the_wrong_shape_fails(register):
    class Drifting(ProbeNet):
        def forward(self, images: torch.Tensor) -> SegmentationOutput:
            self.classifier.bias.data += 1.0  # a state change in eval mode
            return super().forward(images)

    with pytest.raises(AssertionError, match="differ between runs"):
        check_eval_forward(register("family_probe_drifting", lambda num_classes: Drifting(num_classes)))

    class HalfSize(ProbeNet):
        def forward(self, images: torch.Tensor) -> SegmentationOutput:
            return SegmentationOutput(logits=self.classifier(self.body(images)))

    with pytest.raises(AssertionError):
        check_eval_forward(register("family_probe_half_size", lambda num_classes: HalfSize(num_classes)))
