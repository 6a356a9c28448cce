"""Object-Contextual Representations head (Yuan et al., "Object-Contextual Representations for Semantic
Segmentation", arXiv 1909.11065), as used by HRNet-OCR and NVIDIA's hierarchical multi-scale attention.

Data flow of `OCRHead.forward(features)`:

    features --conv3x3_ocr--> pixel feats ------------------------------+
    features --aux_head--> soft object regions (aux logits)             |
    soft regions + pixel feats --spatial_gather--> object regions (K)   |
    pixel feats + object regions --ocr_distri_head (attention, fusion)--> ocr feats --cls_head--> logits

Parameter names follow the NVIDIA checkpoint (`ocr.conv3x3_ocr.0`, `ocr.ocr_distri_head.object_context_block.
f_pixel.1.0`, `ocr.aux_head.2`, ...). A conv followed by BN+ReLU keeps the reference's nesting `Sequential(conv,
Sequential(bn, relu))` so the keys read `<name>.1.0.weight`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attnseg.models.checkpointing import checkpointed

NormLayer = Callable[[int], nn.Module]


def _bn_relu(channels: int, norm_layer: NormLayer) -> nn.Sequential:
    return nn.Sequential(norm_layer(channels), nn.ReLU())


def spatial_gather(features: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """Object region representations: features averaged under each class's spatial softmax.

    Args:
        features: pixel features (N, C, H, W).
        region_logits: soft object region logits (N, K, H, W).

    Returns:
        (N, C, K, 1) region representations (the trailing 1 lets 1x1 convs act on them).
    """
    n, k = region_logits.shape[:2]
    probs = torch.softmax(region_logits.reshape(n, k, -1), dim=2)  # (N, K, HW)
    regions = torch.matmul(probs, features.reshape(n, features.shape[1], -1).permute(0, 2, 1))  # (N, K, C)
    return regions.permute(0, 2, 1).unsqueeze(3)


class ObjectAttentionBlock(nn.Module):
    """Pixel-to-region attention: each pixel (query) attends over the K object regions (keys/values)."""

    def __init__(self, in_channels: int, key_channels: int, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.key_channels = key_channels

        def transform(c_in: int, c_out: int, depth: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 1, bias=False), _bn_relu(c_out, norm_layer)]
            return nn.Sequential(*layers)

        self.f_pixel = transform(in_channels, key_channels, 2)
        self.f_object = transform(in_channels, key_channels, 2)
        self.f_down = transform(in_channels, key_channels, 1)
        self.f_up = transform(key_channels, in_channels, 1)

    def forward(self, features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        n, _, h, w = features.shape
        query = self.f_pixel(features).reshape(n, self.key_channels, -1).permute(0, 2, 1)  # (N, HW, Ck)
        key = self.f_object(regions).reshape(n, self.key_channels, -1)  # (N, Ck, K)
        value = self.f_down(regions).reshape(n, self.key_channels, -1).permute(0, 2, 1)  # (N, K, Ck)
        similarity = torch.softmax(self.key_channels**-0.5 * torch.matmul(query, key), dim=-1)
        context = torch.matmul(similarity, value).permute(0, 2, 1).reshape(n, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """Object context for every pixel, concatenated with the pixel features and fused by a 1x1 conv."""

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        out_channels: int,
        dropout: float = 0.05,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels, norm_layer)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False),
            _bn_relu(out_channels, norm_layer),
            nn.Dropout2d(dropout),
        )

    def forward(self, features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(features, regions)
        return self.conv_bn_dropout(torch.cat([context, features], dim=1))


class OCRHead(nn.Module):
    """OCR decoder on top of a backbone representation.

    Args:
        in_channels: channels of the backbone representation (720 for HRNet-W48).
        num_classes: output classes.
        mid_channels: pixel/OCR feature channels (512 in the reference).
        key_channels: attention key/query channels (256 in the reference).
        dropout: Dropout2d rate after the OCR fusion (0.05 in the reference).
        norm_layer: normalisation constructor taking the channel count.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mid_channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.05,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        self.mid_channels = mid_channels
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1), _bn_relu(mid_channels, norm_layer)
        )
        self.ocr_distri_head = SpatialOCR(mid_channels, key_channels, mid_channels, dropout, norm_layer)
        self.cls_head = nn.Conv2d(mid_channels, num_classes, 1)
        self.aux_head = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1),
            _bn_relu(in_channels, norm_layer),
            nn.Conv2d(in_channels, num_classes, 1),
        )
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing in training: the aux head, the OCR fusion and the BN-ReLU after the pixel-feature
        conv each keep only their inputs and recompute their activations in the backward pass (separate units: the
        whole head recomputed at once would hold all of its activations again at the peak).

        The 3x3 pixel-feature conv itself is not recomputed: it is 70% of the head's compute (109 of 155 GMAC per
        512x1024 image with HRNet-W48) for one stored map of `mid_channels`.
        """
        self.grad_checkpointing = enabled

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone features (N, C, h, w) -> (class logits, aux logits, OCR features), all at (h, w)."""
        if self.grad_checkpointing and self.training:
            conv, bn_relu = self.conv3x3_ocr
            pixels = checkpointed(bn_relu, conv(features))
            aux_logits = checkpointed(self.aux_head, features)
            regions = spatial_gather(pixels, aux_logits)
            ocr_features = checkpointed(self.ocr_distri_head, pixels, regions)
        else:
            pixels = self.conv3x3_ocr(features)
            aux_logits = self.aux_head(features)
            regions = spatial_gather(pixels, aux_logits)
            ocr_features = self.ocr_distri_head(pixels, regions)
        return self.cls_head(ocr_features), aux_logits, ocr_features
