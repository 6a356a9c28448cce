"""Segmentation losses and the criterion that binds them to named model outputs.

Losses take ``(logits (N, K, H, W), labels (N, H, W))`` with ``ignore_index = 255``, run in fp32 with autocast
off, and contain no device-specific code. `SegmentationCriterion` applies weighted losses to fields of
`SegmentationOutput`; `nvidia_criterion`, `paddle_cityscapes_sota_criterion` and `psanet_criterion` are the
references' training recipes; `build_loss` / `build_criterion` map config names to classes.
"""

from attnseg.losses.bootstrapped_ce import BootstrappedCrossEntropyLoss, OhemCrossEntropyLoss
from attnseg.losses.criterion import (
    LOSS_CLASSES,
    LossTerm,
    SegmentationCriterion,
    build_criterion,
    build_loss,
    nvidia_criterion,
    paddle_cityscapes_sota_criterion,
    psanet_criterion,
    select_output,
)
from attnseg.losses.cross_entropy import (
    CrossEntropyLoss,
    ImageWeightedCrossEntropyLoss,
    ImageWeightedSoftNLLLoss,
    one_hot_with_ignore_channel,
)
from attnseg.losses.dice import DiceLoss, LegacyDiceLoss
from attnseg.losses.rmi import RMILoss

__all__ = [
    "LOSS_CLASSES",
    "BootstrappedCrossEntropyLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "ImageWeightedCrossEntropyLoss",
    "ImageWeightedSoftNLLLoss",
    "LegacyDiceLoss",
    "LossTerm",
    "OhemCrossEntropyLoss",
    "RMILoss",
    "SegmentationCriterion",
    "build_criterion",
    "build_loss",
    "nvidia_criterion",
    "one_hot_with_ignore_channel",
    "paddle_cityscapes_sota_criterion",
    "psanet_criterion",
    "select_output",
]
