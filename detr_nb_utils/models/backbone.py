"""ResNet-50 backbone of DETR with frozen BatchNorm, joined with the sine positional encoding; and a small
convolutional backbone for the tiny DETR that the demo pre-trains on synthetic shapes (:class:`ConvBackbone`).

Used by :func:`~detr_nb_utils.models.detr.build_detr` (all notebooks). The state-dict prefix is
``backbone.0.body.`` as in the published checkpoint. The fast mode (:mod:`.fast`) runs the same convolutions with
the frozen BatchNorms folded into them; :attr:`Backbone.fold_batchnorm` says whether it does (``ConvBackbone``'s
GroupNorms depend on their input and cannot be folded: it has no such attribute).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from . import fast
from .position_encoding import PositionEmbeddingSine

TRAINABLE_STAGES = ("layer2", "layer3", "layer4")
GROUPS = 8  # GroupNorm groups of ConvBackbone


class Backbone(nn.Module):
    """torchvision ResNet-50, every BatchNorm frozen, stem and ``layer1`` frozen, ``layer4`` output only.

    Args:
        pretrained: load torchvision's ImageNet weights (downloads; the DETR checkpoint overwrites
            them anyway, so the notebooks leave this False and never touch the network).
        train_backbone: when False, every backbone parameter is frozen.

    ``fold_batchnorm`` (False: the published computation) and ``folded_weight_cache`` are the fast mode's state,
    set by :func:`~detr_nb_utils.models.fast.set_fast_mode` and :func:`~detr_nb_utils.models.fast.
    cached_folded_weights`.
    """

    num_channels = 2048

    def __init__(self, pretrained: bool = False, train_backbone: bool = True) -> None:
        super().__init__()
        weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
        net = resnet50(weights=weights, norm_layer=FrozenBatchNorm2d)
        for name, p in net.named_parameters():
            if not train_backbone or not any(stage in name for stage in TRAINABLE_STAGES):
                p.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, return_layers={"layer4": "0"})
        self.fold_batchnorm = False
        self.folded_weight_cache: dict | None = None

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``[B,3,H,W]``, ``mask`` bool ``[B,H,W]`` → features ``[B,2048,H/32,W/32]`` and
        the mask resized to them (nearest)."""
        if self.fold_batchnorm:
            features = fast.folded_resnet_forward(self.body, images, self.folded_weight_cache)
        else:
            features = self.body(images)["0"]
        return features, resize_mask(mask, features)


def resize_mask(mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The padding mask bool ``[B,H,W]`` resized (nearest) to the feature map ``[B,C,h,w]``: bool ``[B,h,w]``."""
    return F.interpolate(mask[None].float(), size=features.shape[-2:])[0].to(torch.bool)


class ConvBackbone(nn.Module):
    """A small backbone trained from scratch: a 3x3 convolution of stride 2, a GroupNorm and a ReLU per entry of
    ``channels`` (stride ``2 ** len(channels)``: 16 by default), every parameter trainable.

    GroupNorm, not BatchNorm: it does not depend on the batch (fine-tuning runs batches of 2) and holds the features
    at unit scale while they learn. Without a normalisation the features' spread grew about eightyfold within 400
    steps from scratch (lr 1e-3) and drowned the positional encoding that the transformer adds to them. GroupNorm's
    statistics include a batch's padding: an image padded to a larger one gets slightly different features (the
    pre-training pads nothing: all its images have one size).

    The tiny DETR of the demo world (``build_detr(backbone="tiny")``): pre-trained on synthetic shapes
    (:mod:`detr_nb_utils.training.pretrain`), then fine-tuned as the study fine-tunes the official checkpoint. Its
    keys are ``backbone.0.body.conv1.weight``, ``….norm1.weight``, ``….norm1.bias``, …; everything after the
    backbone is DETR's.

    Args:
        channels: output channels of each convolution; the last is :attr:`num_channels`.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"ConvBackbone: channels must be a non-empty tuple of positive integers, got {channels!r}")
        layers, c_in = OrderedDict(), 3
        for i, c in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1, bias=False)
            layers[f"norm{i}"] = nn.GroupNorm(min(GROUPS, c), c)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            nn.init.kaiming_normal_(layers[f"conv{i}"].weight, nonlinearity="relu")
            c_in = c
        self.body = nn.Sequential(layers)
        self.num_channels = c_in
        self.stride = 2 ** len(channels)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``[B,3,H,W]``, ``mask`` bool ``[B,H,W]`` → features ``[B,num_channels,⌈H/stride⌉,
        ⌈W/stride⌉]`` and the mask resized to them (nearest)."""
        features = self.body(images)
        return features, resize_mask(mask, features)


class Joiner(nn.Sequential):
    """``[0]`` the backbone, ``[1]`` the positional encoding (no state), as in the published layout."""

    def __init__(self, backbone: Backbone | ConvBackbone, position_embedding: PositionEmbeddingSine) -> None:
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        """Returns ``features [B,2048,h,w]`` (``num_channels``), ``mask [B,h,w]`` and ``pos [B,256,h,w]``
        (``hidden_dim``; features' dtype)."""
        features, feat_mask = self[0](images, mask)
        pos = self[1](feat_mask).to(features.dtype)
        return features, feat_mask, pos
