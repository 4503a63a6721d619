"""The published DETR implementation (facebookresearch/detr), built for timing beside this project's model.

The published source is NOT part of this repository: pass the folder of a checkout (its ``models/`` and ``util/``)
as ``src``. Nothing here changes its computation: the model, matcher and criterion are the published classes, built
with the published defaults (``main.py``'s arguments: ResNet-50, 6 encoder layers, post-norm, sine positions,
aux loss, costs 1/5/2, loss weights 1/5/2, eos_coef 0.1). The one deviation is how the backbone is constructed:
the published ``Backbone`` asks torchvision for ImageNet weights (a download, and the ``pretrained=`` keyword
newer torchvision rejects); here the same ``BackboneBase`` wraps ``resnet50(weights=None)`` with the published
``FrozenBatchNorm2d`` (weights are random for timing either way).

Used by :mod:`benchmarks.bench_step` (``--published-src``); run alone it checks that the source imports::

    python benchmarks/bench_published.py --published-src /tmp/detr_ref
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision


class PublishedUnavailable(RuntimeError):
    """The published source is missing or does not import; the comparison is skipped."""


def _import_published(src: Path):
    """Import ``models.detr``, ``models.backbone`` and ``util.misc`` from ``src`` (its top-level names are
    ``models`` and ``util``, so they are imported with ``src`` first on ``sys.path`` and then left there)."""
    src = Path(src).resolve()
    if not (src / "models" / "detr.py").is_file() or not (src / "util" / "misc.py").is_file():
        raise PublishedUnavailable(f"{src} has no models/detr.py and util/misc.py (a facebookresearch/detr checkout)")
    for name in ("models", "util"):
        mod = sys.modules.get(name)
        if mod is not None and not str(getattr(mod, "__file__", "") or "").startswith(str(src)):
            raise PublishedUnavailable(f"another top-level '{name}' package is already imported ({mod.__file__})")
    sys.path.insert(0, str(src))
    try:
        detr = importlib.import_module("models.detr")
        backbone = importlib.import_module("models.backbone")
        misc = importlib.import_module("util.misc")
    except Exception as e:  # an old checkout against a new torchvision fails in many ways
        raise PublishedUnavailable(f"the published source in {src} does not import: {type(e).__name__}: {e}") from e
    return detr, backbone, misc


def published_args(num_queries: int = 100, dec_layers: int = 6, lr_backbone: float = 1e-5) -> SimpleNamespace:
    """The published ``main.py`` defaults that ``build`` reads (detection only, no masks)."""
    return SimpleNamespace(
        dataset_file="coco", device="cpu", num_queries=num_queries, aux_loss=True, masks=False, frozen_weights=None,
        backbone="resnet50", dilation=False, position_embedding="sine", lr_backbone=lr_backbone,
        hidden_dim=256, dropout=0.1, nheads=8, dim_feedforward=2048, enc_layers=6, dec_layers=dec_layers,
        pre_norm=False, set_cost_class=1.0, set_cost_bbox=5.0, set_cost_giou=2.0,
        bbox_loss_coef=5.0, giou_loss_coef=2.0, mask_loss_coef=1.0, dice_loss_coef=1.0, eos_coef=0.1)


def build_published(src: Path | str, num_queries: int = 100, dec_layers: int = 6):
    """``(model, criterion, call)``: the published DETR and SetCriterion, and ``call(images, mask) -> outputs``
    that wraps the batch in the published ``NestedTensor`` (the published forward's input).

    ``criterion.weight_dict`` holds the published weights (ce 1, bbox 5, giou 2, repeated per auxiliary layer).
    """
    detr, backbone_mod, misc = _import_published(Path(src))
    args = published_args(num_queries, dec_layers)
    body = torchvision.models.resnet50(weights=None, norm_layer=backbone_mod.FrozenBatchNorm2d)
    backbone = backbone_mod.BackboneBase(body, train_backbone=args.lr_backbone > 0, num_channels=2048,
                                         return_interm_layers=False)
    joiner = backbone_mod.Joiner(backbone, backbone_mod.build_position_encoding(args))
    joiner.num_channels = backbone.num_channels
    model = detr.DETR(joiner, detr.build_transformer(args), num_classes=91, num_queries=num_queries,
                      aux_loss=args.aux_loss)
    weight_dict = {"loss_ce": 1, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    weight_dict.update({f"{k}_{i}": v for i in range(dec_layers - 1) for k, v in list(weight_dict.items())})
    criterion = detr.SetCriterion(91, matcher=detr.build_matcher(args), weight_dict=weight_dict,
                                  eos_coef=args.eos_coef, losses=["labels", "boxes", "cardinality"])

    def call(images: torch.Tensor, mask: torch.Tensor) -> dict:
        return model(misc.NestedTensor(images, mask))

    return model, criterion, call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--published-src", default="/tmp/detr_ref", help="folder of a facebookresearch/detr checkout")
    a = p.parse_args()
    try:
        model, criterion, call = build_published(a.published_src)
    except PublishedUnavailable as e:
        print(f"skipped: {e}")
        return
    n = sum(p.numel() for p in model.parameters())
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        out = call(images, mask)
    print(f"published DETR from {a.published_src}: {n:,} parameters, pred_logits {tuple(out['pred_logits'].shape)}")


if __name__ == "__main__":
    main()
