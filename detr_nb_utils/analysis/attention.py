"""Attention maps of a DETR model, recorded with hooks and without touching the model's code (paper Figs. 3 and 6).

The transformer calls its ``nn.MultiheadAttention`` modules with ``need_weights=False`` (the fast path).
:func:`record_attention` registers, for as long as its ``with`` block lasts, forward pre-hooks that switch the
encoder self-attention and the decoder cross-attention to ``need_weights=True, average_attn_weights=True``
(weights averaged over the heads) and forward hooks that keep the weights and hand the transformer the
``(output, None)`` it expects, so nothing downstream changes. Leaving the block removes every hook.

Shapes: ``B`` images, ``S = h·w`` positions of the (padded) stride-32 feature map, ``Q`` queries. Encoder
self-attention ``[B, S, S]`` (row: the attending position, columns: the positions attended to) and decoder
cross-attention ``[B, Q, S]`` per layer; :func:`encoder_attention_at` and :func:`decoder_attention_of` cut one
map out and reshape it to the image's own (unpadded) ``[h_i, w_i]`` cells. Used by 02_checkpoint_inspection through
:mod:`detr_nb_utils.notebook.figures_attention`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from ..models.fast import model_forward
from ..models.postprocess import best_real_class


@dataclass
class AttentionRecord:
    """What :func:`record_attention` kept from the last forward pass (head-averaged, fp32, on the CPU).

    ``encoder[l]``: ``[B, S, S]`` self-attention of encoder layer ``l``; ``decoder[l]``: ``[B, Q, S]``
    cross-attention of decoder layer ``l``; ``pixel_mask``: bool ``[B, H, W]`` and ``feature_mask``: bool
    ``[B, h, w]``, True on padding (the model's input mask, and the one the transformer saw).
    """

    encoder: list[torch.Tensor | None] = field(default_factory=list)
    decoder: list[torch.Tensor | None] = field(default_factory=list)
    pixel_mask: torch.Tensor | None = None
    feature_mask: torch.Tensor | None = None

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the padded feature map of the batch (``S = h·w``)."""
        return tuple(self.feature_mask.shape[-2:])

    def valid_shape(self, image_index: int) -> tuple[int, int]:
        """``(h_i, w_i)``: the feature cells of image ``image_index`` that are not padding."""
        valid = ~self.feature_mask[image_index]
        return int(valid.any(1).sum()), int(valid.any(0).sum())

    def input_size(self, image_index: int) -> tuple[int, int]:
        """``(H_i, W_i)``: the unpadded size in pixels of image ``image_index`` as the model saw it."""
        valid = ~self.pixel_mask[image_index]
        return int(valid.any(1).sum()), int(valid.any(0).sum())

    def cell_size(self) -> tuple[float, float]:
        """Pixels of the model's input per feature cell, ``(dy, dx)`` (32 for the ResNet-50's stride)."""
        (hp, wp), (h, w) = self.pixel_mask.shape[-2:], self.feature_shape
        return hp / h, wp / w


def attention_modules(model: nn.Module) -> dict[str, list[nn.MultiheadAttention]]:
    """``{"encoder": [self_attn per encoder layer], "decoder": [multihead_attn per decoder layer]}``."""
    found = {"encoder": [layer.self_attn for layer in model.transformer.encoder.layers],
             "decoder": [layer.multihead_attn for layer in model.transformer.decoder.layers]}
    for part, modules in found.items():
        for m in modules:
            if not isinstance(m, nn.MultiheadAttention):
                raise TypeError(f"record_attention needs nn.MultiheadAttention in the {part}, found "
                                f"{type(m).__name__}")
    return found


def _ask_for_weights(module, args, kwargs):
    return args, {**kwargs, "need_weights": True, "average_attn_weights": True}


def _keeper(store: list, index: int):
    def keep(module, args, output):
        store[index] = output[1].detach().float().cpu()
        return output[0], None  # what the transformer gets with need_weights=False
    return keep


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Within the ``with`` block, every forward of ``model`` records its attention maps in the yielded
    :class:`AttentionRecord` (the last forward's). The model must be in eval mode: in training mode dropout
    would act on the weights. All hooks are removed on leaving the block, also after an exception."""
    if model.training:
        raise ValueError("record_attention: call model.eval() first (in training mode dropout changes the "
                         "attention weights)")
    modules = attention_modules(model)
    record = AttentionRecord([None] * len(modules["encoder"]), [None] * len(modules["decoder"]))
    handles = []
    for part, store in (("encoder", record.encoder), ("decoder", record.decoder)):
        for i, m in enumerate(modules[part]):
            handles.append(m.register_forward_pre_hook(_ask_for_weights, with_kwargs=True))
            handles.append(m.register_forward_hook(_keeper(store, i)))

    def keep_masks(module, args, output):  # backbone: (images, mask) -> (features, feature mask, pos)
        record.pixel_mask, record.feature_mask = args[1].detach().cpu(), output[1].detach().cpu()

    handles.append(model.backbone.register_forward_hook(keep_masks))
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def run_with_attention(model: nn.Module, images: torch.Tensor, mask: torch.Tensor,
                       amp_dtype: torch.dtype | None = None) -> tuple[dict, AttentionRecord]:
    """``model``'s outputs (fp32) for ``images`` ``[B,3,H,W]`` / ``mask`` ``[B,H,W]`` and their attention maps.
    The model is put in eval mode and left there."""
    model.eval()
    with record_attention(model) as record:
        outputs = model_forward(model, images, mask, amp_dtype)
    return outputs, record


def _crop(flat: torch.Tensor, record: AttentionRecord, image_index: int) -> torch.Tensor:
    """A map over the ``S`` positions of the padded feature map ``[S]`` → the image's cells ``[h_i, w_i]``."""
    h_i, w_i = record.valid_shape(image_index)
    return flat.reshape(record.feature_shape)[:h_i, :w_i]


def encoder_attention_at(record: AttentionRecord, layer: int, image_index: int,
                         point_yx_in_pixels: tuple[float, float], image_size: tuple[int, int]) -> torch.Tensor:
    """Where the feature cell under a point attends to in encoder layer ``layer``: ``[h_i, w_i]``, summing to 1.

    ``point_yx_in_pixels``: ``(y, x)`` in an image of size ``image_size`` ``(H, W)``: the original image or the
    resized one, any size of the same picture (the point is mapped through the resize the model saw).
    """
    (y, x), (hh, ww) = point_yx_in_pixels, image_size
    if not (0 <= y < hh and 0 <= x < ww):
        raise ValueError(f"encoder_attention_at: point_yx_in_pixels {point_yx_in_pixels} lies outside the image "
                         f"of size {image_size}")
    (h_in, w_in), (dy, dx) = record.input_size(image_index), record.cell_size()
    h_i, w_i = record.valid_shape(image_index)
    row = min(int(y * h_in / hh / dy), h_i - 1)
    col = min(int(x * w_in / ww / dx), w_i - 1)
    return _crop(record.encoder[layer][image_index, row * record.feature_shape[1] + col], record, image_index)


def decoder_attention_of(record: AttentionRecord, layer: int, image_index: int, query: int) -> torch.Tensor:
    """Where query ``query`` looks in decoder layer ``layer`` (cross-attention): ``[h_i, w_i]``, summing to 1."""
    return _crop(record.decoder[layer][image_index, query], record, image_index)


def map_extent(record: AttentionRecord, image_index: int, image_size: tuple[int, int]) -> tuple[float, ...]:
    """``(left, right, bottom, top)`` in pixels of an image of size ``image_size`` that the ``[h_i, w_i]`` cells
    cover, for ``imshow(..., extent=...)`` over that image (the last cells may reach a little past its edge)."""
    (hh, ww), (h_in, w_in) = image_size, record.input_size(image_index)
    (dy, dx), (h_i, w_i) = record.cell_size(), record.valid_shape(image_index)
    return 0.0, w_i * dx * ww / w_in, h_i * dy * hh / h_in, 0.0


def detected_objects(outputs: dict, image_index: int, threshold: float = 0.7) -> pd.DataFrame:
    """The queries of image ``image_index`` whose best real-class probability is at least ``threshold`` (0.7 as
    in the paper's demo), best first: ``query``, ``label`` (category id), ``score``, ``cx, cy, w, h``
    (normalised to the unpadded image)."""
    score, label = (t.cpu() for t in best_real_class(outputs["pred_logits"][image_index]))
    boxes = outputs["pred_boxes"][image_index].float().cpu()
    keep = torch.nonzero(score >= threshold).flatten()
    df = pd.DataFrame({"query": keep.numpy(), "label": label[keep].numpy(), "score": score[keep].numpy(),
                       **{c: boxes[keep, i].numpy() for i, c in enumerate(("cx", "cy", "w", "h"))}})
    return df.sort_values("score", ascending=False, ignore_index=True)
