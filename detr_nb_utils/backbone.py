"""ResNet-50 backbone of DETR with frozen BatchNorm, joined with the sine positional encoding.

Used by :func:`detr_nb_utils.model.build_detr` (all notebooks). The state-dict prefix is
``backbone.0.body.`` as in the published checkpoint.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBN

from .position_encoding import PositionEmbeddingSine

TRAINABLE_STAGES = ("layer2", "layer3", "layer4")


class FrozenBatchNorm2d(_TorchvisionFrozenBN):
    """torchvision's ``FrozenBatchNorm2d`` (the published one): ``x * scale + shift`` with fixed statistics; when
    ``folded`` it passes ``x`` through, its affine map having been applied inside the preceding convolution."""

    folded = False

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale`` (``[C]`` each)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.folded else super().forward(x)


class FoldableConv2d(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` followed by a :class:`FrozenBatchNorm2d`; when that one is ``folded``, the
    convolution runs with weight ``W * scale`` and bias ``shift`` instead: the same function (a frozen BatchNorm is
    an affine map per output channel) in one pass over the activations instead of three. The gradient reaches
    ``W`` through the product. Parameters and state-dict keys are the plain convolution's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.__dict__.get("frozen_bn")  # kept out of _modules: not a child, no state-dict entries
        if bn is None or not bn.folded:
            return super().forward(x)
        cache = self.__dict__.get("weight_cache")  # set by cached_folded_weights, for no-grad forwards
        if cache is not None and not torch.is_grad_enabled():
            if x.dtype not in cache:
                cache[x.dtype] = tuple(t.to(x.dtype) for t in self._folded(bn))
            weight, bias = cache[x.dtype]
        else:
            weight, bias = self._folded(bn)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _folded(self, bn: FrozenBatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = bn.scale_shift()
        return self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype), shift.to(self.weight.dtype)


def _conv_bn_pairs(net: nn.Module):
    """(parent, conv attribute name, its BatchNorm) for every convolution of a torchvision ResNet."""
    yield net, "conv1", net.bn1
    for block in net.modules():
        if isinstance(block, Bottleneck):
            for i in (1, 2, 3):
                yield block, f"conv{i}", getattr(block, f"bn{i}")
            if block.downsample is not None:
                yield block.downsample, "0", block.downsample[1]


def _make_foldable(net: nn.Module) -> None:
    """Swap every ResNet convolution for a :class:`FoldableConv2d` holding the same weight ``Parameter``."""
    for parent, name, bn in _conv_bn_pairs(net):
        conv = getattr(parent, name)
        if conv.bias is not None or not isinstance(bn, FrozenBatchNorm2d):
            raise TypeError(f"cannot fold {type(bn).__name__} into {name} (bias: {conv.bias is not None}); "
                            "only a bias-free convolution followed by a FrozenBatchNorm2d folds")
        new = FoldableConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                             padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=False,
                             device="meta")
        new.weight = conv.weight
        new.__dict__["frozen_bn"] = bn
        setattr(parent, name, new)


def set_batchnorm_folding(model: nn.Module, folded: bool) -> None:
    """Fold (or unfold) every frozen BatchNorm of ``model``'s backbone into its convolution; see
    :class:`FoldableConv2d`. Used by the fast mode (:func:`detr_nb_utils.precision.model_forward` with bf16):
    under autocast the convolution then writes bf16 directly, where the unfolded BatchNorm turns every activation
    into fp32 and back. The fp32 mode keeps the published order of operations (unfolded)."""
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.folded = folded


@contextlib.contextmanager
def cached_folded_weights(model: nn.Module) -> Iterator[None]:
    """For a block in which ``model``'s weights do not change (evaluation): every folded convolution makes its
    weight ``W * scale``, cast to its input's dtype, once for the whole block instead of at every forward (about
    6 % of a bf16 eval forward at 512x512 on a 2-core CPU). Only no-grad forwards use it; the copies are
    dropped on leaving the block. Used by :func:`detr_nb_utils.evaluate.evaluate`."""
    convs = [m for m in model.modules() if isinstance(m, FoldableConv2d)]
    for conv in convs:
        conv.__dict__["weight_cache"] = {}
    try:
        yield
    finally:
        for conv in convs:
            conv.__dict__.pop("weight_cache", None)


class Backbone(nn.Module):
    """torchvision ResNet-50, every BatchNorm frozen, stem and ``layer1`` frozen, ``layer4`` output only.

    Args:
        pretrained: load torchvision's ImageNet weights (downloads; the DETR checkpoint overwrites
            them anyway, so the notebooks leave this False and never touch the network).
        train_backbone: when False, every backbone parameter is frozen.
    """

    num_channels = 2048

    def __init__(self, pretrained: bool = False, train_backbone: bool = True) -> None:
        super().__init__()
        weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
        net = resnet50(weights=weights, norm_layer=FrozenBatchNorm2d)
        for name, p in net.named_parameters():
            if not train_backbone or not any(stage in name for stage in TRAINABLE_STAGES):
                p.requires_grad_(False)
        _make_foldable(net)
        self.body = IntermediateLayerGetter(net, return_layers={"layer4": "0"})

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``[B,3,H,W]``, ``mask`` bool ``[B,H,W]`` → features ``[B,2048,H/32,W/32]`` and
        the mask resized to them (nearest)."""
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
