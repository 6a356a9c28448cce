"""Named, weighted loss terms over the fields of `SegmentationOutput`, and the references' training recipes.

A criterion reads model outputs by name (``"logits"``, ``"aux_logits"``, ``"scale_logits[0.5]"``), resizes a
prediction to the label size when the two differ (bilinear, align_corners=False: both references upsample the
0.5x prediction that way, with ``scale_as``, before its loss) and returns every weighted term by name plus the
total under ``"loss"``. All losses run in fp32 with autocast off.

Recipes (term order matters for reproducing the references bit for bit; it is the order below):

========================================  ==========================================================================
``nvidia_criterion(rmi=True)``            NVIDIA ``two_scale_forward``: ``0.4 * aux_joint + main_joint +
                                          0.05 * lo_0.5x + 0.05 * hi_1.0x``; with RMILoss, only ``main_joint`` uses
                                          the RMI part (``do_rmi = [False, True, False, False]``), the rest is the
                                          sigmoid BCE. ``rmi=False``: NVIDIA's default CrossEntropyLoss2d.
``paddle_cityscapes_sota_criterion``      PaddleSeg CityscapesSOTA: Dice on [joint, aux, 0.5x, 1.0x] with coefs
                                          [1, 0.4, 0.05, 0.05], then BootstrappedCE on the same four.
``psanet_criterion``                      PSANet: ``CE(main) + 0.4 * CE(aux)``.
========================================  ==========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.errors import ConfigError
from attnseg.losses._common import IGNORE_INDEX, full_precision
from attnseg.losses.bootstrapped_ce import BootstrappedCrossEntropyLoss, OhemCrossEntropyLoss
from attnseg.losses.cross_entropy import CrossEntropyLoss, ImageWeightedCrossEntropyLoss, ImageWeightedSoftNLLLoss
from attnseg.losses.dice import DiceLoss, LegacyDiceLoss
from attnseg.losses.rmi import RMILoss
from attnseg.models.outputs import SegmentationOutput

_DICT_FIELD = re.compile(r"^(scale_logits|scale_attention)\[([0-9.eE+-]+)\]$")


@dataclass(frozen=True, eq=False)
class LossTerm:
    """One weighted loss on one named model output.

    Attributes:
        output: a field of SegmentationOutput: ``"logits"``, ``"aux_logits"``, or ``"scale_logits[<scale>]"``.
        loss: a module called as ``loss(prediction, target)``.
        weight: multiplier of this term in the total.
        name: key of the weighted term in the criterion's result.
    """

    output: str
    loss: nn.Module
    weight: float
    name: str


def select_output(output: SegmentationOutput, field_name: str) -> torch.Tensor:
    """The tensor that ``field_name`` names in ``output`` (see LossTerm.output).

    Raises:
        KeyError: the field is absent (e.g. a model without an aux head, or a scale the model did not run).
    """
    if field_name in ("logits", "aux_logits"):
        tensor = getattr(output, field_name)
        if tensor is None:
            raise KeyError(f"the model output has no {field_name!r} (a loss term asks for it)")
        return tensor
    match = _DICT_FIELD.match(field_name)
    if match is None:
        raise KeyError(
            f"unknown model output {field_name!r}; use 'logits', 'aux_logits' or 'scale_logits[<scale>]'"
        )
    per_scale: dict[float, torch.Tensor] = getattr(output, match.group(1))
    scale = float(match.group(2))
    if scale not in per_scale:
        available = ", ".join(f"{match.group(1)}[{s:g}]" for s in sorted(per_scale)) or "none"
        raise KeyError(f"the model output has no {field_name!r}; available: {available}")
    return per_scale[scale]


def resize_to_labels(prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (N, K, h, w) to the labels' (H, W); unchanged when equal."""
    size = labels.shape[-2:]
    if prediction.shape[-2:] == size:
        return prediction
    return F.interpolate(prediction, size=size, mode="bilinear", align_corners=False)


class SegmentationCriterion(nn.Module):
    """A weighted sum of loss terms, each on one named field of the model output.

    ``criterion(output, target)`` returns ``{term.name: weight * loss, ..., "loss": total}``; the terms are
    evaluated, and summed, in the given order. The same ``target`` object is passed to every term (no copy).

    Args:
        terms: the loss terms; names must be unique and must not be ``"loss"``.
    """

    def __init__(self, terms: Iterable[LossTerm]) -> None:
        super().__init__()
        self.terms = tuple(terms)
        if not self.terms:
            raise ValueError("a criterion needs at least one loss term")
        names = [term.name for term in self.terms]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"loss term names must be unique and not 'loss', got {names}")
        for term in self.terms:
            select_output_field_check(term.output)
        # registered so that .to(device) moves class-weight buffers
        self.losses = nn.ModuleList(term.loss for term in self.terms)

    def forward(self, output: SegmentationOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms by name and their sum under ``"loss"``."""
        result: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for term in self.terms:
            prediction = select_output(output, term.output)
            with full_precision(prediction):
                prediction = resize_to_labels(prediction.float(), target)
                weighted = term.weight * term.loss(prediction, target)
            result[term.name] = weighted
            total = weighted if total is None else total + weighted
        result["loss"] = total
        return result

    def extra_repr(self) -> str:
        return ", ".join(f"{t.name}={t.weight:g}*{type(t.loss).__name__}({t.output})" for t in self.terms)


def select_output_field_check(field_name: str) -> None:
    """Raises ValueError unless ``field_name`` is a syntactically valid output name."""
    if field_name not in ("logits", "aux_logits") and _DICT_FIELD.match(field_name) is None:
        raise ValueError(f"unknown model output {field_name!r}; use 'logits', 'aux_logits' or 'scale_logits[<scale>]'")


# ----------------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------------
def _scale_field(scale: float) -> str:
    return f"scale_logits[{float(scale)}]"


def nvidia_criterion(
    rmi: bool = True,
    num_classes: int = 19,
    aux_weight: float = 0.4,
    scale_weight: float = 0.05,
    low_scale: float | None = 0.5,
    aux_rmi: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationCriterion:
    """NVIDIA MscaleOCR training loss (``two_scale_forward``).

    Terms, in order: ``aux_joint`` (aux_logits, weight ``aux_weight``), ``main_joint`` (logits, 1.0),
    ``lo_<s>x`` (scale_logits[low_scale], ``scale_weight``), ``hi_1.0x`` (scale_logits[1.0], ``scale_weight``).
    With ``rmi`` every term is an RMILoss; only main_joint includes the RMI part (``aux_rmi`` adds it to the aux
    term, the reference's ``--ocr_aux_loss_rmi``). Without ``rmi`` every term is CrossEntropyLoss.

    Args:
        rmi: RMILoss (the ``rmi_loss: true`` recipes) or cross entropy (the reference default).
        num_classes: K.
        aux_weight: ``OCR_ALPHA`` (0.4).
        scale_weight: ``SUPERVISED_MSCALE_WT`` (0.05 in the Cityscapes recipes); 0 drops the per-scale terms.
        low_scale: the training low scale; None for a model trained at scale 1.0 only (no ``lo`` term).
        aux_rmi: include the RMI part in the aux term too.
        ignore_index: label value that takes no part in the loss.
    """

    def loss(do_rmi: bool) -> nn.Module:
        if rmi:
            return RMILoss(num_classes, do_rmi=do_rmi, ignore_index=ignore_index)
        return CrossEntropyLoss(ignore_index=ignore_index)

    terms = [
        LossTerm("aux_logits", loss(aux_rmi), aux_weight, "aux_joint"),
        LossTerm("logits", loss(True), 1.0, "main_joint"),
    ]
    if scale_weight:
        if low_scale is not None:
            terms.append(LossTerm(_scale_field(low_scale), loss(False), scale_weight, f"lo_{float(low_scale)}x"))
        terms.append(LossTerm(_scale_field(1.0), loss(False), scale_weight, "hi_1.0x"))
    return SegmentationCriterion(terms)


DiceFormula = Literal["2.8", "2021"]


def paddle_cityscapes_sota_criterion(
    min_K: int = 100000,  # noqa: N803 (PaddleSeg's config name)
    loss_th: float = 0.05,
    dice: DiceFormula = "2.8",
    reproduce_label_mutation: bool = False,
    low_scale: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationCriterion:
    """PaddleSeg CityscapesSOTA loss: Dice x4 then BootstrappedCE x4 on [joint, aux, 0.5x, 1.0x].

    Coefficients [1, 0.4, 0.05, 0.05] for both loss kinds. Term names ``dice_joint, dice_aux, dice_lo_0.5x,
    dice_hi_1.0x, bce_joint, bce_aux, bce_lo_0.5x, bce_hi_1.0x``.

    Args:
        min_K: BootstrappedCE minimum kept pixels per image (config: 100000 for 2048x1024 crops; scale it with
            the crop area, e.g. 1600 for 128x256).
        loss_th: BootstrappedCE pixel-loss threshold.
        dice: "2.8" (PaddleSeg 2.8 DiceLoss, what the contrib code runs today) or "2021" (the Feb-2021 formula
            of the release that reached 87.0 mIoU, :class:`LegacyDiceLoss`).
        reproduce_label_mutation: make the first Dice term overwrite ignored labels with 0 *in the caller's
            label tensor*, as PaddleSeg 2.8 does, so the seven later terms treat them as class 0 (golden
            ``train/loss_terms_as_run``). Only for parity checks; it changes the labels the caller holds.
        low_scale: the training low scale.
        ignore_index: label value that takes no part in the loss.
    """
    if dice not in ("2.8", "2021"):
        raise ValueError(f"dice must be '2.8' or '2021', got {dice!r}")
    outputs = [("joint", "logits", 1.0), ("aux", "aux_logits", 0.4),
               (f"lo_{float(low_scale)}x", _scale_field(low_scale), 0.05), ("hi_1.0x", _scale_field(1.0), 0.05)]
    terms = []
    for index, (suffix, field_name, weight) in enumerate(outputs):
        if dice == "2021":
            dice_loss: nn.Module = LegacyDiceLoss(ignore_index=ignore_index)
        else:
            mutate = reproduce_label_mutation and index == 0  # later terms then see the overwritten labels
            dice_loss = DiceLoss(ignore_index=ignore_index, overwrite_ignored_labels=mutate)
        terms.append(LossTerm(field_name, dice_loss, weight, f"dice_{suffix}"))
    for suffix, field_name, weight in outputs:
        bce = BootstrappedCrossEntropyLoss(min_K, loss_th, ignore_index=ignore_index)
        terms.append(LossTerm(field_name, bce, weight, f"bce_{suffix}"))
    return SegmentationCriterion(terms)


def psanet_criterion(aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> SegmentationCriterion:
    """PSANet (semseg / PSANet_paddle): ``CE(logits)`` named ``main`` plus ``aux_weight * CE(aux_logits)`` named
    ``aux``."""
    return SegmentationCriterion([
        LossTerm("logits", CrossEntropyLoss(ignore_index=ignore_index), 1.0, "main"),
        LossTerm("aux_logits", CrossEntropyLoss(ignore_index=ignore_index), aux_weight, "aux"),
    ])


# ----------------------------------------------------------------------------------------------------------------
# Config names
# ----------------------------------------------------------------------------------------------------------------
LOSS_CLASSES: dict[str, type[nn.Module]] = {
    "cross_entropy": CrossEntropyLoss,
    "image_weighted_cross_entropy": ImageWeightedCrossEntropyLoss,
    "image_weighted_soft_nll": ImageWeightedSoftNLLLoss,
    "rmi": RMILoss,
    "dice": DiceLoss,
    "dice_2021": LegacyDiceLoss,
    "bootstrapped_cross_entropy": BootstrappedCrossEntropyLoss,
    "ohem_cross_entropy": OhemCrossEntropyLoss,
}
# Losses whose constructor takes the class count as its first argument.
_NEEDS_NUM_CLASSES = frozenset({"image_weighted_cross_entropy", "image_weighted_soft_nll", "rmi"})


def build_loss(name: str, num_classes: int = 19, ignore_index: int = IGNORE_INDEX, **options: Any) -> nn.Module:
    """A loss from its config name (a key of ``LOSS_CLASSES``) and its constructor options.

    Args:
        name: e.g. ``"cross_entropy"``, ``"rmi"``, ``"dice"``, ``"bootstrapped_cross_entropy"``.
        num_classes: passed to the losses that need it (rmi, image-weighted losses).
        ignore_index: passed to every loss.
        **options: the loss's own constructor arguments (e.g. ``min_K=100000, loss_th=0.05``).

    Raises:
        ConfigError: unknown name or options the loss does not take.
    """
    try:
        loss_class = LOSS_CLASSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSS_CLASSES))}") from None
    if name in _NEEDS_NUM_CLASSES:
        options = {"num_classes": num_classes, **options}
    try:
        return loss_class(ignore_index=ignore_index, **options)
    except TypeError as error:
        raise ConfigError(f"loss {name!r}: bad options {sorted(options)}: {error}") from None


def build_criterion(
    terms: Iterable[Any], num_classes: int = 19, ignore_index: int = IGNORE_INDEX
) -> SegmentationCriterion:
    """A criterion from config entries with attributes ``output``, ``loss``, ``weight`` and ``options`` (a
    mapping; e.g. ``attnseg.config.LossTermConfig``). Term names are ``"<loss>:<output>"``.

    Raises:
        ConfigError: unknown loss or output name, bad options, or the same loss twice on one output.
    """
    built = []
    for entry in terms:
        options: Mapping[str, Any] = getattr(entry, "options", None) or {}
        loss = build_loss(entry.loss, num_classes=num_classes, ignore_index=ignore_index, **dict(options))
        try:
            select_output_field_check(entry.output)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        built.append(LossTerm(entry.output, loss, float(getattr(entry, "weight", 1.0)), f"{entry.loss}:{entry.output}"))
    try:
        return SegmentationCriterion(built)
    except ValueError as error:
        raise ConfigError(str(error)) from None
