"""DETR (Carion et al., ECCV 2020) with a ResNet-50 backbone, laid out like the published checkpoint.

``state_dict()`` has exactly the keys and shapes of ``detr-r50-e632da11.pth`` (458 entries for 6 decoder
layers, 100 queries, 91 classes), so the official weights load with ``strict=True``. Used by every notebook
(``from detr_nb_utils import build_detr``). ``build_detr(**TINY_DETR)`` is the demo world's tiny DETR: the same
model with a small convolutional backbone and a narrower transformer (:data:`TINY_DETR`).
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, ConvBackbone, Joiner
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (the box head: 256 → 256 → 256 → 4)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DETR(nn.Module):
    """DEtection TRansformer.

    Args:
        backbone: :class:`~detr_nb_utils.models.backbone.Joiner` (ResNet-50, or the tiny
            :class:`~detr_nb_utils.models.backbone.ConvBackbone`, + sine positions).
        transformer: :class:`~detr_nb_utils.models.transformer.Transformer`.
        num_classes: largest category id + 1 (91 for COCO); the class head has ``num_classes + 1``
            outputs, the last ("no object") at index ``num_classes``.
        num_queries: number of object queries (detection slots).
        aux_loss: also return the predictions of every decoder layer but the last.
    """

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int,
                 aux_loss: bool = True) -> None:
        super().__init__()
        hidden_dim = transformer.d_model
        # registration order follows the published model, so state_dict() lists keys in its order
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss

    @property
    def dec_layers(self) -> int:
        return len(self.transformer.decoder.layers)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        """Args:
            images: float ``[B,3,H,W]``, ImageNet-normalised, padded at the bottom/right.
            mask: bool ``[B,H,W]``, True on padding.

        Returns:
            ``pred_logits`` ``[B,Q,num_classes+1]``; ``pred_boxes`` ``[B,Q,4]`` (cx, cy, w, h) in [0, 1]
            relative to each unpadded image; ``aux_outputs``: one ``{pred_logits, pred_boxes}`` per decoder
            layer ``0 … L-2`` (only when ``aux_loss``).
        """
        features, feat_mask, pos = self.backbone(images, mask)
        hs = self.transformer(self.input_proj(features), feat_mask, self.query_embed.weight, pos)[0]
        logits = self.class_embed(hs)  # (L, B, Q, num_classes + 1)
        boxes = self.bbox_embed(hs).sigmoid()  # (L, B, Q, 4)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


BACKBONES = ("resnet50", "tiny")
#: the demo world's tiny DETR, ``build_detr(**TINY_DETR)``: a 4-convolution backbone of stride
#: 16 and a 64-wide transformer with 2 encoder layers; decoder depth, queries and classes as published
TINY_DETR = {"backbone": "tiny", "hidden_dim": 64, "nheads": 4, "enc_layers": 2, "dim_feedforward": 256}


def build_detr(num_classes: int = 91, num_queries: int = 100, dec_layers: int = 6, enc_layers: int = 6,
               hidden_dim: int = 256, nheads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1,
               aux_loss: bool = True, pretrained_backbone: bool = False, backbone: str = "resnet50") -> DETR:
    """The published DETR-R50 (defaults) or a variant of it.

    ``pretrained_backbone=False`` never touches the network: the DETR checkpoint overwrites the backbone.
    ``backbone``: ``"resnet50"`` (the published model) or ``"tiny"`` (:class:`~.backbone.ConvBackbone`, trained from
    scratch, no pretrained weights; see :data:`TINY_DETR`). Only the backbone's keys differ between the two.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"build_detr: backbone must be one of {BACKBONES}, got {backbone!r}")
    if backbone == "tiny" and pretrained_backbone:
        raise ValueError("build_detr: the tiny backbone has no pretrained weights; use pretrained_backbone=False")
    for name, value, low in (("num_classes", num_classes, 1), ("num_queries", num_queries, 1),
                             ("dec_layers", dec_layers, 1), ("enc_layers", enc_layers, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"build_detr: {name} must be an integer >= {low}, got {value!r}")
    if hidden_dim % nheads or hidden_dim % 2:
        raise ValueError(f"build_detr: hidden_dim ({hidden_dim}) must be even and divisible by nheads ({nheads})")
    body = Backbone(pretrained=pretrained_backbone) if backbone == "resnet50" else ConvBackbone()
    transformer = Transformer(d_model=hidden_dim, nhead=nheads, enc_layers=enc_layers, dec_layers=dec_layers,
                              dim_feedforward=dim_feedforward, dropout=dropout)
    return DETR(Joiner(body, PositionEmbeddingSine(hidden_dim // 2)), transformer, num_classes=num_classes,
                num_queries=num_queries, aux_loss=aux_loss)


COMPONENTS = ("backbone", "transformer.encoder", "transformer.decoder", "input_proj", "query_embed",
              "class_embed", "bbox_embed")


def parameter_table(model: nn.Module) -> pd.DataFrame:
    """Parameters per component (rows of :data:`COMPONENTS`, then ``total``): ``parameters``, ``trainable``.

    Frozen BatchNorm statistics are buffers and not counted. Used by 02_checkpoint_inspection and 06_analysis.
    """
    rows = {c: [0, 0] for c in COMPONENTS}
    for name, p in model.named_parameters():
        comp = next((c for c in COMPONENTS if name.startswith(c + ".")), None)
        if comp is None:
            raise KeyError(f"parameter {name} belongs to none of {COMPONENTS}")
        rows[comp][0] += p.numel()
        rows[comp][1] += p.numel() if p.requires_grad else 0
    df = pd.DataFrame.from_dict(rows, orient="index", columns=["parameters", "trainable"])
    df.loc["total"] = df.sum()
    return df
