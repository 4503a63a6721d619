"""ResNet-50 backbone of DETR with frozen BatchNorm, joined with the sine positional encoding.

Used by :func:`~detr_nb_utils.models.detr.build_detr` (all notebooks). The state-dict prefix is
``backbone.0.body.`` as in the published checkpoint. The fast mode (:mod:`.fast`) runs the same convolutions with
the frozen BatchNorms folded into them; :attr:`Backbone.fold_batchnorm` says whether it does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from . import fast
from .position_encoding import PositionEmbeddingSine

TRAINABLE_STAGES = ("layer2", "layer3", "layer4")


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
        feat_mask = F.interpolate(mask[None].float(), size=features.shape[-2:])[0].to(torch.bool)
        return features, feat_mask


class Joiner(nn.Sequential):
    """``[0]`` the backbone, ``[1]`` the positional encoding (no state), as in the published layout."""

    def __init__(self, backbone: Backbone, position_embedding: PositionEmbeddingSine) -> None:
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        """Returns ``features [B,2048,h,w]``, ``mask [B,h,w]`` and ``pos [B,256,h,w]`` (features' dtype)."""
        features, feat_mask = self[0](images, mask)
        pos = self[1](feat_mask).to(features.dtype)
        return features, feat_mask, pos
