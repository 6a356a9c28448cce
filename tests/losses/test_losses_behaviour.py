"""Behaviour of every loss and of the criterion: ignore_index, no label mutation, the documented reference
quirks and their per-image options, mining branches, autocast, config names, and that SGD lowers each loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnseg.errors import ConfigError
from attnseg.losses import (
    LOSS_CLASSES,
    BootstrappedCrossEntropyLoss,
    CrossEntropyLoss,
    DiceLoss,
    ImageWeightedCrossEntropyLoss,
    ImageWeightedSoftNLLLoss,
    LegacyDiceLoss,
    LossTerm,
    OhemCrossEntropyLoss,
    RMILoss,
    SegmentationCriterion,
    build_criterion,
    build_loss,
    nvidia_criterion,
    one_hot_with_ignore_channel,
    paddle_cityscapes_sota_criterion,
    psanet_criterion,
)
from attnseg.losses.rmi import log_det_cholesky, region_vectors
from attnseg.models.outputs import SegmentationOutput

K = 5


def all_losses() -> dict[str, torch.nn.Module]:
    return {
        "cross_entropy": CrossEntropyLoss(),
        "weighted_cross_entropy": CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 1.5, 1.0]),
        "image_weighted_cross_entropy": ImageWeightedCrossEntropyLoss(K),
        "image_weighted_soft_nll": ImageWeightedSoftNLLLoss(K),
        "rmi": RMILoss(K),
        "rmi_bce_only": RMILoss(K, do_rmi=False),
        "dice": DiceLoss(),
        "dice_2021": LegacyDiceLoss(),
        "bootstrapped_cross_entropy": BootstrappedCrossEntropyLoss(min_K=100, loss_th=0.3),
        "ohem_cross_entropy": OhemCrossEntropyLoss(thresh=0.7, min_kept=50),
        "ohem_without_mining": OhemCrossEntropyLoss(thresh=0.7, min_kept=0),
    }


def make_batch(seed: int = 0, n: int = 2, h: int = 16, w: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, h, w, generator=generator)
    labels = torch.randint(0, K, (n, h, w), generator=generator)
    labels[torch.rand(n, h, w, generator=generator) < 0.2] = 255
    return logits, labels


@pytest.mark.parametrize("name", list(all_losses()))
def test_ignored_pixels_take_no_part_and_labels_are_untouched(name):
    loss = all_losses()[name]
    logits, labels = make_batch()
    before = labels.clone()
    logits = logits.requires_grad_(True)
    value = loss(logits, labels)
    value.backward()
    assert torch.equal(labels, before), f"{name} changed the caller's labels"
    assert value.dtype == torch.float32 and torch.isfinite(value)
    ignored = (labels == 255).unsqueeze(1).expand_as(logits)
    assert float(logits.grad[ignored].abs().max()) == 0.0
    assert float(logits.grad[~ignored].abs().max()) > 0.0
    changed = logits.detach() + 5.0 * torch.randn_like(logits) * ignored
    torch.testing.assert_close(loss(changed, labels), value.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(all_losses()))
def test_sgd_steps_lower_the_loss(name):
    torch.manual_seed(0)
    loss = all_losses()[name]
    _, labels = make_batch(seed=3)
    model = torch.nn.Conv2d(3, K, 3, padding=1)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    images = images + F.one_hot(torch.where(labels == 255, 0, labels), K).permute(0, 3, 1, 2)[:, :3].float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    values = []
    for _ in range(8):
        optimizer.zero_grad()
        value = loss(model(images), labels)
        value.backward()
        optimizer.step()
        values.append(float(value.detach()))
    assert values[-1] < values[0], f"{name}: {values}"


@pytest.mark.parametrize("name", list(all_losses()))
def test_loss_is_computed_in_float32_under_bf16_autocast(name):
    loss = all_losses()[name]
    logits, labels = make_batch()
    logits = logits.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits, labels)
    assert value.dtype == torch.float32
    reference = loss(logits.float(), labels)
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Cross entropy family
# ----------------------------------------------------------------------------------------------------------------
def test_cross_entropy_equals_torch_weighted_mean():
    logits, labels = make_batch()
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    expected = F.cross_entropy(logits, labels, weight=weight, ignore_index=255)
    torch.testing.assert_close(CrossEntropyLoss(weight=weight)(logits, labels), expected)


def test_cross_entropy_of_an_all_ignored_batch_is_zero_with_a_gradient():
    logits = torch.randn(1, K, 4, 4, requires_grad=True)
    value = CrossEntropyLoss()(logits, torch.full((1, 4, 4), 255))
    value.backward()
    assert float(value.detach()) == 0.0 and logits.grad is not None


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="resize the prediction"):
        CrossEntropyLoss()(torch.randn(1, K, 8, 8), torch.zeros(1, 4, 4, dtype=torch.long))


def test_image_weighted_batch_and_per_image_weights():
    logits, labels = make_batch()
    batch = ImageWeightedCrossEntropyLoss(K, weights_from="batch")
    per_image = ImageWeightedCrossEntropyLoss(K, weights_from="image")
    torch.testing.assert_close(batch(logits[:1], labels[:1]), per_image(logits[:1], labels[:1]))
    labels[1] = torch.where(labels[1] == 255, 255, 0)  # image 2 only class 0: its own weights differ from the batch's
    assert abs(float(batch(logits, labels)) - float(per_image(logits, labels))) > 1e-3
    # per image: sum over images of the class-weighted mean with that image's weights 1 + (1 - share)
    expected = 0.0
    for i in range(2):
        counts = torch.bincount(labels[i][labels[i] != 255], minlength=K).float()
        weight = torch.where(counts > 0, 2.0 - counts / counts.sum(), torch.ones(K))
        expected += float(F.cross_entropy(logits[i:i + 1], labels[i:i + 1], weight=weight, ignore_index=255))
    assert float(per_image(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_image_weighted_rejects_labels_outside_the_classes():
    logits, labels = make_batch()
    labels[0, 0, 0] = K  # neither a class nor ignore_index
    with pytest.raises(ValueError, match="outside"):
        ImageWeightedCrossEntropyLoss(K)(logits, labels)


def test_soft_nll_on_hard_labels_is_batch_size_times_weighted_nll_per_image():
    logits, labels = make_batch()
    quirk = ImageWeightedSoftNLLLoss(K)
    own = ImageWeightedSoftNLLLoss(K, border_weights_from="image")
    torch.testing.assert_close(quirk(logits, labels), 2 * own(logits, labels))
    torch.testing.assert_close(quirk(logits[:1], labels[:1]), own(logits[:1], labels[:1]))


def reference_style_soft_nll(logits, target, class_weights):
    """The written formula, single image, computed literally in float64."""
    logits, target = logits.double(), target.double()
    soft = logits.softmax(dim=1)
    multi = target[:, :-1]
    relaxed = torch.log(torch.maximum(soft, multi * (soft * multi).sum(1, keepdim=True)))
    border = multi.sum(1)
    ignored = border == 0
    border = torch.where(ignored, torch.ones_like(border), border)
    terms = torch.nan_to_num(multi * class_weights.double()[None, :, None, None] * relaxed).sum(1)
    loss = (-terms / border * (~ignored)).sum()
    return loss / ((~ignored).sum() + 1)


def test_soft_nll_on_a_multi_hot_boundary_target():
    logits, labels = make_batch(n=1)
    target = one_hot_with_ignore_channel(labels, K)
    target[0, 1:K, 5:8, :] = 1.0  # a relaxed boundary band: several classes allowed
    target[0, K, 5:8, :] = 0.0
    mass = target.sum(dim=(0, 2, 3))
    class_weights = (1.0 + (mass > 0) * (1.0 - mass / mass.sum()))[:-1]
    expected = reference_style_soft_nll(logits, target, class_weights)
    assert float(ImageWeightedSoftNLLLoss(K)(logits, target)) == pytest.approx(float(expected), rel=1e-5)


def test_one_hot_with_ignore_channel():
    labels = torch.tensor([[[0, 255], [K - 1, 2]]])
    target = one_hot_with_ignore_channel(labels, K)
    assert target.shape == (1, K + 1, 2, 2)
    assert target[0, K, 0, 1] == 1 and target[0, :, 0, 1].sum() == 1 and target[0, K - 1, 1, 0] == 1
    with pytest.raises(ValueError, match="outside"):
        one_hot_with_ignore_channel(torch.tensor([[[K]]]), K)


# ----------------------------------------------------------------------------------------------------------------
# RMI
# ----------------------------------------------------------------------------------------------------------------
def test_region_vectors_and_log_det():
    maps = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    vectors = region_vectors(maps, 3)
    assert vectors.shape == (2, 3, 9, 4, 5)
    torch.testing.assert_close(vectors[:, :, 4], maps[:, :, 1:5, 1:6])  # window centre
    torch.testing.assert_close(vectors[:, :, 8], maps[:, :, 2:6, 2:7])
    matrix = torch.randn(4, 6, 6, dtype=torch.float64)
    matrix = matrix @ matrix.transpose(-1, -2) + torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(log_det_cholesky(matrix), torch.logdet(matrix), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the RMI region"):
        region_vectors(torch.zeros(1, 1, 2, 8), 3)


def test_rmi_prefers_the_right_prediction():
    _, labels = make_batch(h=32, w=32)
    right = 6.0 * F.one_hot(torch.where(labels == 255, 0, labels), K).permute(0, 3, 1, 2).float() - 3.0
    wrong = right.roll(1, dims=1)
    rmi = RMILoss(K)
    assert float(rmi(right, labels)) < float(rmi(wrong, labels))


def test_rmi_options_are_validated():
    with pytest.raises(ValueError):
        RMILoss(K, pool="median")
    with pytest.raises(ValueError):
        RMILoss(K, radius=0)
    logits, labels = make_batch(h=32, w=32)
    for pool in ("max", "interpolate"):
        assert torch.isfinite(RMILoss(K, pool=pool)(logits, labels))


# ----------------------------------------------------------------------------------------------------------------
# Dice
# ----------------------------------------------------------------------------------------------------------------
def test_dice_of_a_confident_right_prediction_is_near_zero():
    labels = torch.randint(0, K, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    logits = 50.0 * F.one_hot(labels, K).permute(0, 3, 1, 2).float()
    assert float(DiceLoss()(logits, labels)) < 1e-4
    assert float(LegacyDiceLoss()(logits, labels)) < 1e-4


def test_dice_class_weights_scale_the_per_class_terms():
    logits, labels = make_batch()
    weight = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    weighted = float(DiceLoss(weight=weight)(logits, labels))
    mask = labels != 255
    probs = logits.softmax(1)[:, 0] * mask
    target = ((labels == 0) & mask).float()
    per_image = 1 - (2 * (probs * target).sum((1, 2)) + 1) / ((probs + target).sum((1, 2)) + 1 + 1e-8)
    assert weighted == pytest.approx(float(per_image.mean()) / K, rel=1e-6)


def test_dice_mutation_option_only_overwrites_ignored_pixels():
    logits, labels = make_batch()
    shared = labels.clone()
    DiceLoss(overwrite_ignored_labels=True)(logits, shared)
    assert torch.equal(shared, torch.where(labels == 255, 0, labels))


# ----------------------------------------------------------------------------------------------------------------
# Mining losses
# ----------------------------------------------------------------------------------------------------------------
def bootstrapped_by_sorting(losses: torch.Tensor, k: int, threshold: float) -> float:
    ordered = losses.sort(descending=True).values
    if ordered[k] > threshold:
        return float(ordered[ordered > threshold].mean())
    return float(ordered[:k].mean())


@pytest.mark.parametrize(("k", "threshold"), [(10, 0.1), (10, 5.0), (200, 0.5), (255, 0.0)])
def test_bootstrapped_ce_follows_the_sorted_rule(k, threshold):
    logits, labels = make_batch()
    pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none").flatten(1)
    expected = np.mean([bootstrapped_by_sorting(row, k, threshold) for row in pixel])
    assert float(BootstrappedCrossEntropyLoss(k, threshold)(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_bootstrapped_ce_with_min_k_beyond_the_image_takes_every_pixel():
    logits, labels = make_batch()
    pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    loss = BootstrappedCrossEntropyLoss(10**6, 0.1)
    assert float(loss(logits, labels)) == pytest.approx(float(pixel.mean()), rel=1e-6)


def ohem_by_reference_steps(logits, labels, thresh, min_kept):
    """PaddleSeg's OhemCrossEntropyLoss, step by step in numpy."""
    n, c, h, w = logits.shape
    label = labels.numpy().reshape(-1).astype(np.int64)
    valid = (label != 255).astype(np.int64)
    num_valid = valid.sum()
    label = label * valid
    prob = torch.softmax(logits, 1).numpy().transpose(1, 0, 2, 3).reshape(c, -1)
    if min_kept < num_valid and num_valid > 0:
        prob = prob + (1 - valid)
        prob = (prob * np.eye(c)[label].T).sum(0)
        threshold = thresh
        if min_kept > 0:
            index = prob.argsort(kind="stable")
            if prob[index[min(len(index), min_kept) - 1]] > thresh:
                threshold = prob[index[min(len(index), min_kept) - 1]]
            kept = (prob < threshold).astype(np.int64)
            valid = valid * kept
    nll = F.cross_entropy(logits, torch.from_numpy(label.reshape(n, h, w)), reduction="none").numpy().reshape(-1)
    return (nll * valid).mean() / (valid.mean() + 1e-5)


@pytest.mark.parametrize(("thresh", "min_kept"), [(0.7, 50), (0.05, 50), (0.7, 0), (0.3, 10**5)])
def test_ohem_follows_the_reference_steps(thresh, min_kept):
    logits, labels = make_batch()
    expected = ohem_by_reference_steps(logits, labels, thresh, min_kept)
    ours = float(OhemCrossEntropyLoss(thresh, min_kept)(logits, labels))
    assert ours == pytest.approx(float(expected), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Criterion
# ----------------------------------------------------------------------------------------------------------------
def two_scale_output(n: int = 1, h: int = 16, w: int = 16, seed: int = 0) -> SegmentationOutput:
    generator = torch.Generator().manual_seed(seed)
    full = lambda: torch.randn(n, K, h, w, generator=generator)  # noqa: E731
    return SegmentationOutput(
        logits=full(), aux_logits=full(),
        scale_logits={0.5: torch.randn(n, K, h // 2, w // 2, generator=generator), 1.0: full()},
        scale_attention={0.5: torch.rand(n, 1, h // 2, w // 2, generator=generator)},
    )  # fmt: skip


def test_criterion_upsamples_the_low_scale_and_weights_terms():
    output = two_scale_output()
    _, labels = make_batch(n=1)
    criterion = nvidia_criterion(rmi=False, num_classes=K)
    result = criterion(output, labels)
    assert list(result) == ["aux_joint", "main_joint", "lo_0.5x", "hi_1.0x", "loss"]
    ce = CrossEntropyLoss()
    upsampled = F.interpolate(output.scale_logits[0.5], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(result["lo_0.5x"], 0.05 * ce(upsampled, labels))
    torch.testing.assert_close(result["aux_joint"], 0.4 * ce(output.aux_logits, labels))
    torch.testing.assert_close(result["loss"], sum(v for k, v in result.items() if k != "loss"))


def test_nvidia_criterion_uses_rmi_only_on_the_main_term():
    criterion = nvidia_criterion(rmi=True, num_classes=K)
    flags = {term.name: term.loss.do_rmi for term in criterion.terms}
    assert flags == {"aux_joint": False, "main_joint": True, "lo_0.5x": False, "hi_1.0x": False}
    assert [t.name for t in nvidia_criterion(num_classes=K, low_scale=None).terms] == ["aux_joint", "main_joint",
                                                                                      "hi_1.0x"]
    assert [t.name for t in nvidia_criterion(num_classes=K, scale_weight=0).terms] == ["aux_joint", "main_joint"]


def test_paddle_criterion_layout_and_mutation_default_off():
    criterion = paddle_cityscapes_sota_criterion(min_K=20)
    assert [t.weight for t in criterion.terms] == [1.0, 0.4, 0.05, 0.05] * 2
    assert [t.output for t in criterion.terms[:4]] == ["logits", "aux_logits", "scale_logits[0.5]",
                                                       "scale_logits[1.0]"]
    _, labels = make_batch(n=1)
    before = labels.clone()
    criterion(two_scale_output(), labels)
    assert torch.equal(labels, before)
    legacy = paddle_cityscapes_sota_criterion(min_K=20, dice="2021")
    assert all(isinstance(t.loss, LegacyDiceLoss) for t in legacy.terms[:4])


def test_missing_outputs_are_named():
    _, labels = make_batch(n=1)
    output = SegmentationOutput(logits=torch.randn(1, K, 16, 16))
    with pytest.raises(KeyError, match="aux_logits"):
        psanet_criterion()(output, labels)
    with pytest.raises(KeyError, match=r"available: scale_logits\[1\]"):
        nvidia_criterion(rmi=False, num_classes=K)(
            SegmentationOutput(output.logits, output.logits, {1.0: output.logits}), labels)
    with pytest.raises(ValueError, match="unknown model output"):
        SegmentationCriterion([LossTerm("features", CrossEntropyLoss(), 1.0, "x")])
    with pytest.raises(ValueError, match="unique"):
        SegmentationCriterion([LossTerm("logits", CrossEntropyLoss(), 1.0, "x")] * 2)


def test_criterion_under_autocast_returns_float32():
    output = two_scale_output()
    output = SegmentationOutput(output.logits.bfloat16(), output.aux_logits.bfloat16(),
                                {s: t.bfloat16() for s, t in output.scale_logits.items()})
    _, labels = make_batch(n=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = nvidia_criterion(rmi=True, num_classes=K)(output, labels)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in result.values())


def test_build_loss_knows_every_config_name():
    expected = {"cross_entropy", "rmi", "dice", "bootstrapped_cross_entropy", "ohem_cross_entropy",
                "image_weighted_cross_entropy"}
    assert expected <= set(LOSS_CLASSES)
    options = {"bootstrapped_cross_entropy": {"min_K": 10, "loss_th": 0.1}}
    for name, loss_class in LOSS_CLASSES.items():
        loss = build_loss(name, num_classes=K, ignore_index=250, **options.get(name, {}))
        assert type(loss) is loss_class and loss.ignore_index == 250
    assert build_loss("rmi", num_classes=K).num_classes == K
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        build_loss("focal")
    with pytest.raises(ConfigError, match="bad options"):
        build_loss("dice", smoth=1.0)


@dataclass(frozen=True)
class _TermConfig:  # the shape of attnseg.config.LossTermConfig
    output: str
    loss: str
    weight: float = 1.0
    options: dict = field(default_factory=dict)


def test_build_criterion_from_config_entries():
    criterion = build_criterion(
        [_TermConfig("logits", "rmi"), _TermConfig("aux_logits", "rmi", 0.4, {"do_rmi": False}),
         _TermConfig("scale_logits[0.5]", "cross_entropy", 0.05)],
        num_classes=K,
    )  # fmt: skip
    assert [t.name for t in criterion.terms] == ["rmi:logits", "rmi:aux_logits", "cross_entropy:scale_logits[0.5]"]
    assert criterion.terms[1].loss.do_rmi is False and criterion.terms[1].weight == 0.4
    _, labels = make_batch(n=1)
    assert torch.isfinite(criterion(two_scale_output(), labels)["loss"])
    with pytest.raises(ConfigError, match="unknown model output"):
        build_criterion([_TermConfig("feature_map", "dice")])
    with pytest.raises(ConfigError, match="unique"):
        build_criterion([_TermConfig("logits", "dice"), _TermConfig("logits", "dice")])


@pytest.mark.parametrize("name", list(all_losses()))
def test_uint8_labels_give_the_same_loss(name):
    loss = all_losses()[name]
    logits, labels = make_batch()
    torch.testing.assert_close(loss(logits, labels.to(torch.uint8)), loss(logits, labels))


@pytest.mark.parametrize("name", list(all_losses()))
def test_channels_last_logits_give_the_same_loss_and_gradient(name):
    # A channels-last model hands the criterion NHWC-strided logits; some losses take a faster path for them.
    loss = all_losses()[name]
    logits, labels = make_batch(n=2, h=12, w=20)
    dense = logits.clone().requires_grad_(True)
    strided = logits.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert not strided.is_contiguous()
    dense_value, strided_value = loss(dense, labels), loss(strided, labels)
    (dense_value * 1.5).backward()
    (strided_value * 1.5).backward()
    torch.testing.assert_close(strided_value, dense_value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(strided.grad, dense.grad, rtol=1e-5, atol=1e-7)
