"""A DETR-R50 of this project as a Hugging Face model folder: ``DetrForObjectDetection`` weights (safetensors), its
config, a preprocessor configuration and a model card, loadable offline by ``from_pretrained`` and
``pipeline("object-detection")``.

The layout: transformers' own ResNet backbone (``use_timm_backbone=False``), not ``facebook/detr-resnet-50``'s timm
one. Both hold the same numbers under other names (:mod:`detr_nb_utils.models.hf_layout`), but a timm-backbone
config needs the ``timm`` package to build the model, while transformers' ResNet needs nothing beyond transformers:
the folder loads offline with the fewest packages. (The Hub's ``no_timm`` revision of ``facebook/detr-resnet-50`` is
this layout too.)

What the config carries, and why:

- ``id2label``/``label2id`` from the run's label map: COCO's space keeps its 91 rows, the unused ids named ``"N/A"``
  as ``facebook/detr-resnet-50`` names them; a dataset's own classes are its K classes in index order, and
  ``category_ids`` lists each index's category id in the dataset;
- the run's decoder layers, queries, widths, ``eos_coefficient``, and the published matcher costs and loss weights;
- the dropout of the run (the published 0.1) in all three places transformers has one: ``dropout`` (residual),
  ``activation_dropout`` (inside the feed-forward) and ``attention_dropout`` (attention weights). transformers'
  defaults leave the last two at 0.0, so a model fine-tuned further there would train differently from this one;
- ``auxiliary_loss`` off: with it on, transformers feeds each decoder layer the layer-normalised output of the
  previous one, where the published model feeds the raw output, so the model would compute another function (its
  final logits moved by 0.7 on random weights). Fine-tuning further in transformers therefore trains on the final
  layer's loss, which equals this project's ``SetCriterion`` without auxiliary losses (tested).

:func:`export_hf` checks what it wrote before it renames the folder into place: transformers loads it with no key
missing or unexpected, and the loaded model's logits and boxes equal this model's to 1e-4 on a padded batch.
Needs the ``export`` extra (transformers, safetensors). Used by ``python -m detr_nb_utils.export --to hf``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.categories import COCO_NAMES
from ..data.label_map import LabelMap
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.backbone import Backbone
from ..models.detr import DETR
from ..models.hf_layout import official_to_hf, require
from ..models.loss import DEFAULT_WEIGHTS
from .output import ExportError, staged_folder

#: the name Hugging Face gives the COCO ids no category uses (``facebook/detr-resnet-50``'s config)
UNUSED = "N/A"
WEIGHTS = "model.safetensors"
CARD = "README.md"
#: how close the loaded model's outputs must be to this project's (logits and boxes, max |difference|)
TOLERANCE = 1e-4
TINY_REFUSED = ("the tiny demo backbone has no Hugging Face counterpart: DetrForObjectDetection's backbones are "
                "ResNets (and other image backbones with pretrained weights), not the demo world's 4-convolution "
                "GroupNorm network. Export it to ONNX instead (--to onnx), which takes every backbone")


#: the parameters the published model freezes (the ResNet stem and layer1), as transformers' ResNet names them
PUBLISHED_FROZEN = ("embedder.", "encoder.stages.0.")


def freeze_as_published(hf_model) -> int:
    """Freeze the ResNet stem and first stage of an exported ``DetrForObjectDetection`` (transformers' ResNet
    layout), as the published model trains; returns how many parameters it froze. transformers itself leaves them
    trainable in this layout, so a model fine-tuned there without this trains 222,400 more parameters."""
    frozen = 0
    for name, p in hf_model.model.backbone.model.named_parameters():
        if name.startswith(PUBLISHED_FROZEN) and p.requires_grad:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def labels_for_config(labels: LabelMap) -> dict:
    """``id2label`` (every class index of the head, ``"N/A"`` for COCO's unused ids), ``label2id`` (the named ones)
    and, for a dataset's own classes, ``category_ids`` (index -> the dataset's category id)."""
    if labels.label_space == "coco":
        id2label = {i: COCO_NAMES.get(i, UNUSED) for i in range(labels.num_classes)}
    else:
        id2label = dict(zip(labels.indices, labels.names))
    out = {"id2label": id2label, "label2id": {n: i for i, n in id2label.items() if n != UNUSED}}
    if labels.label_space == "dataset":
        out["category_ids"] = list(labels.ids)
    return out


def hf_detr(purpose: str):
    """``transformers``, with its PyTorch DETR usable, or an ``ImportError`` saying why not. transformers 5 builds
    ``DetrForObjectDetection`` only on torch 2.6 or newer (its own requirement); the project's core, the ONNX export
    and reading Hugging Face weights (``load_pretrained``) work from torch 2.4."""
    transformers = require("transformers", purpose)
    if not transformers.utils.is_torch_available():  # its PyTorch classes are then placeholders that raise on use
        raise ImportError(f"{purpose} needs transformers' DetrForObjectDetection, which transformers "
                          f"{transformers.__version__} does not provide with torch {torch.__version__}. Install a "
                          "torch it supports (2.6 or newer for transformers 5), or export with --to onnx, which "
                          "works from torch 2.4.")
    return transformers


def hf_config(model: DETR, labels: LabelMap, dropout: float = 0.1, eos_coef: float = 0.1):
    """The ``DetrConfig`` of ``model`` (a DETR-R50 variant of :func:`~detr_nb_utils.models.detr.build_detr`) with
    ``labels``' classes, ``dropout`` in all three of transformers' dropouts, ``eos_coef``, and the published matcher
    costs and loss weights. Raises :class:`ExportError` for the tiny backbone or a head that does not match
    ``labels``."""
    if not isinstance(model.backbone[0], Backbone):
        raise ExportError(TINY_REFUSED)
    if model.num_classes != labels.num_classes:
        raise ExportError(f"the model's head has {model.num_classes} classes, its label map {labels.num_classes}")
    transformers = hf_detr("the Hugging Face export")
    encoder_layer = model.transformer.encoder.layers[0]
    width, heads = model.transformer.d_model, encoder_layer.self_attn.num_heads
    ffn = encoder_layer.linear1.out_features
    return transformers.DetrConfig(
        use_timm_backbone=False, backbone_config=transformers.ResNetConfig(out_features=["stage4"]),
        num_queries=model.num_queries, d_model=width,
        encoder_layers=len(model.transformer.encoder.layers), decoder_layers=model.dec_layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        dropout=dropout, attention_dropout=dropout, activation_dropout=dropout, auxiliary_loss=False,
        position_embedding_type="sine", dilation=False, activation_function="relu",
        class_cost=1, bbox_cost=5, giou_cost=2, bbox_loss_coefficient=int(DEFAULT_WEIGHTS["loss_bbox"]),
        giou_loss_coefficient=int(DEFAULT_WEIGHTS["loss_giou"]), eos_coefficient=eos_coef,
        architectures=["DetrForObjectDetection"], **labels_for_config(labels))


def image_processor(min_size: int, max_size: int):
    """The ``DetrImageProcessor`` of the validation transform: shorter side ``min_size``, longer at most
    ``max_size`` (the published size rule, which transformers' DETR processor follows), [0, 1] scaling, ImageNet
    mean and std, padding at the bottom and right with a pixel mask."""
    transformers = hf_detr("the Hugging Face export")
    return transformers.DetrImageProcessor(
        size={"shortest_edge": int(min_size), "longest_edge": int(max_size)}, do_resize=True, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        do_pad=True)


def export_hf(model: DETR, labels: LabelMap, out_dir: str | os.PathLike, *, min_size: int, max_size: int,
              dropout: float = 0.1, eos_coef: float = 0.1, card: str | None = None, overwrite: bool = False,
              check: bool = True) -> Path:
    """Write ``model`` (a DETR-R50 variant, official layout) as a Hugging Face folder ``out_dir``: ``config.json``
    (:func:`hf_config`), ``model.safetensors`` (the Hub's names, :func:`~detr_nb_utils.models.hf_layout.
    official_to_hf`), ``preprocessor_config.json`` (:func:`image_processor`) and ``README.md`` (``card``, when
    given). ``check``: load the written folder with transformers and compare its outputs with ``model``'s (logits
    and boxes within :data:`TOLERANCE` on a padded batch) before renaming it into place; a failed check raises
    :class:`ExportError` and leaves nothing at ``out_dir``. An existing non-empty ``out_dir`` is refused unless
    ``overwrite``. Returns ``out_dir``."""
    st = require("safetensors.torch", "the Hugging Face export")
    config = hf_config(model, labels, dropout, eos_coef)
    processor = image_processor(min_size, max_size)
    weights = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
               for k, v in official_to_hf(model.state_dict(), backbone="transformers").items()}
    with staged_folder(out_dir, overwrite) as tmp:
        config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        st.save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if card is not None:
            (tmp / CARD).write_text(card)
        if check:
            check_hf_folder(model, tmp)
    return Path(out_dir)


def _probe_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two normalised-looking images of 64x96 px, the second padded to 64x64 at the right (mask True there)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 96, generator=g)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True
    images[1, :, :, 64:] = 0.0
    return images, mask


@torch.no_grad()
def check_hf_folder(model: DETR, folder: str | os.PathLike) -> dict[str, float]:
    """Load ``folder`` with ``DetrForObjectDetection.from_pretrained`` (offline) and compare its final logits and
    boxes with ``model``'s on a padded probe batch. Returns the max |differences|; raises :class:`ExportError` when
    a key is missing or unexpected or a difference passes :data:`TOLERANCE`."""
    transformers = hf_detr("checking the Hugging Face export")
    hf, info = transformers.DetrForObjectDetection.from_pretrained(str(folder), output_loading_info=True)
    bad = {k: sorted(v)[:3] for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise ExportError(f"transformers does not load the exported weights as written ({bad or info['error_msgs']})")
    images, mask = _probe_batch()
    was_training, aux = model.training, model.aux_loss
    model.eval()
    model.aux_loss = False
    try:
        ours = model(images, mask)
    finally:
        model.train(was_training)
        model.aux_loss = aux
    theirs = hf.eval()(pixel_values=images, pixel_mask=(~mask).long())
    diffs = {"logits": (ours["pred_logits"] - theirs.logits).abs().max().item(),
             "boxes": (ours["pred_boxes"] - theirs.pred_boxes).abs().max().item()}
    if not all(d <= TOLERANCE for d in diffs.values()):
        raise ExportError(f"the exported model's outputs differ from this model's by {diffs} (more than "
                          f"{TOLERANCE:g}); the export was not written")
    return diffs

