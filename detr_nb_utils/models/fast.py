"""The fast mode: everything in the models that exists only for speed. A reader of DETR can skip this file.

``precision="fp32"`` runs the published computation. ``precision="bf16"`` (the fast mode) runs only the model's
forward under bf16 autocast (:func:`model_forward`); matching, losses and post-processing get fp32 outputs. A
model enters the fast mode once, when it is built for such a run (:func:`set_fast_mode`), and its state says so:

- ``Backbone.fold_batchnorm``: every frozen BatchNorm is folded into the convolution before it
  (:func:`folded_resnet_forward`): the same function (a frozen BatchNorm is an affine map per channel) in one pass
  over the activations instead of three, with bf16 straight out of each convolution;
- the transformer's ``nn.Dropout`` and ``nn.MultiheadAttention`` modules become :class:`CheapDropout` and
  :class:`FastMultiheadAttention`, subclasses adding no state (same parameters, same state-dict keys), whose
  dropout masks on the CPU come from 16-bit random integers (:func:`cheap_dropout`), where PyTorch's
  ``bernoulli_`` is a serial sampler on non-Intel CPUs.

Also here: the autocast dtype and memory layout a run resolves to, fp32 outputs, and the glibc allocator setting
for CPU runs. Used by :mod:`detr_nb_utils.training` (notebooks 02-05), the analysis and the benchmarks; the
measured effect of each part is in ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "bf16", "auto")
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


# ---- which mode a run gets -------------------------------------------------------------------------------


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (Intel AMX, or AVX512-BF16 as on AMD Zen 4)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``torch.bfloat16`` or ``None`` (plain fp32).

    ``"auto"`` picks bf16 on CUDA GPUs that support it and on CPUs with :func:`cpu_has_fast_bf16`, else fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def resolve_channels_last(channels_last: bool | None, amp_dtype: torch.dtype | None) -> bool:
    """``None`` (the config's default): channels-last exactly when the forward runs under autocast (the fast mode;
    fp32 keeps the published layout). ``True``/``False``: as asked."""
    return amp_dtype is not None if channels_last is None else bool(channels_last)


def set_fast_mode(model: nn.Module, enabled: bool) -> nn.Module:
    """Put a DETR into the fast mode (or back into the published computation) and return it: BatchNorm folding in
    the backbone, :class:`CheapDropout` and :class:`FastMultiheadAttention` in the transformer.

    The modules keep their parameters (an optimizer built before or after keeps working) and the state dict is
    unchanged. Call it once, when the model is built for a bf16 run. A backbone without BatchNorm (the tiny
    :class:`~detr_nb_utils.models.backbone.ConvBackbone`, no ``fold_batchnorm``) has nothing to fold."""
    if hasattr(model.backbone[0], "fold_batchnorm"):
        model.backbone[0].fold_batchnorm = enabled
    for module in model.transformer.modules():
        if isinstance(module, nn.Dropout):
            module.__class__ = CheapDropout if enabled else nn.Dropout
        elif isinstance(module, nn.MultiheadAttention):
            module.__class__ = FastMultiheadAttention if enabled else nn.MultiheadAttention
    return model


def to_float(outputs):
    """``outputs`` (nested dicts/lists of tensors) with every floating tensor cast to fp32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float(v) for v in outputs)
    return outputs


def model_forward(model: nn.Module, images: torch.Tensor, mask: torch.Tensor,
                  amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict:
    """``model(images, mask)``, under autocast to ``amp_dtype`` when given, with fp32 outputs.

    ``images``: ``[B,3,H,W]`` on the model's device; ``mask``: ``[B,H,W]`` bool, True on padding.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if amp_dtype is None:
        return model(images, mask)
    with torch.autocast(images.device.type, dtype=amp_dtype):
        outputs = model(images, mask)
    return to_float(outputs)


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Let the process reuse freed tensor memory instead of handing every large buffer back to the OS (glibc).

    With glibc's defaults every buffer over 32 MiB (or over its adaptive threshold) is a fresh ``mmap``: each
    forward pass page-faults its activations in again. Raising the mmap and trim thresholds to ``threshold_bytes``
    keeps freed memory for the next step; the process then holds on to its peak memory. It changes no value
    computed. Linux with glibc only; returns whether it was applied. Called by the engine for CPU runs.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    value = min(int(threshold_bytes), 2**31 - 1)  # mallopt takes an int
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))


# ---- the backbone: frozen BatchNorm folded into the convolutions ------------------------------------------


def folded_conv_weights(conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W * scale, shift)`` for a bias-free convolution followed by a frozen BatchNorm: ``scale = weight /
    sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``. The gradient reaches ``W``."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    shift = bn.bias - bn.running_mean * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype), shift.to(conv.weight.dtype)


def _conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module, cache: dict | None) -> torch.Tensor:
    """``bn(conv(x))`` as one convolution; ``cache`` (no-grad forwards only) keeps the folded weights per dtype."""
    if cache is not None and not torch.is_grad_enabled():
        key = (id(conv), x.dtype)
        if key not in cache:
            cache[key] = tuple(t.to(x.dtype) for t in folded_conv_weights(conv, bn))
        weight, bias = cache[key]
    else:
        weight, bias = folded_conv_weights(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def folded_resnet_forward(body: nn.Module, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    """The ``layer4`` features of a torchvision ResNet-50 body (``[B,3,H,W]`` → ``[B,2048,H/32,W/32]``), every
    frozen BatchNorm folded into its convolution. ``cache``: see :func:`cached_folded_weights`."""
    x = body.maxpool(F.relu(_conv_bn(x, body.conv1, body.bn1, cache)))
    for stage in (body.layer1, body.layer2, body.layer3, body.layer4):
        for block in stage:  # torchvision's Bottleneck
            out = F.relu(_conv_bn(x, block.conv1, block.bn1, cache))
            out = F.relu(_conv_bn(out, block.conv2, block.bn2, cache))
            out = _conv_bn(out, block.conv3, block.bn3, cache)
            identity = x if block.downsample is None else _conv_bn(x, *block.downsample, cache)
            x = F.relu(out + identity)
    return x


@contextlib.contextmanager
def cached_folded_weights(model: nn.Module) -> Iterator[None]:
    """For a block in which ``model``'s weights do not change (evaluation): a model in the fast mode makes each
    folded convolution weight once per dtype for the whole block instead of at every forward. Only no-grad
    forwards use the cache; it is dropped on leaving the block. Used by
    :func:`detr_nb_utils.training.evaluation.evaluate`."""
    backbone = model.backbone[0]
    if not getattr(backbone, "fold_batchnorm", False):  # nothing folded, nothing to cache
        yield
        return
    backbone.folded_weight_cache = {}
    try:
        yield
    finally:
        backbone.folded_weight_cache = None


# ---- the transformer: cheaper dropout masks on the CPU ----------------------------------------------------


def cheap_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` with a keep mask drawn from 16-bit random integers.

    Four 16-bit draws come from each 64-bit draw of the default generator (seeded by ``torch.manual_seed``). The
    drop probability is ``p`` rounded to a multiple of 2^-16 (0.1 -> 0.100006); kept values are scaled by
    ``1 / (1 - p)`` as in ``F.dropout``, rounded once.
    """
    if p == 0:
        return x
    if p == 1:
        return x * 0
    n = x.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    threshold = round(p * 65536) - 32768  # int16 values below it (probability ~p) are dropped
    keep = bits.view(torch.int16)[:n].view(x.shape) >= threshold
    return torch.where(keep, x * (1 / (1 - p)), 0)


class CheapDropout(nn.Dropout):
    """``nn.Dropout`` whose mask for bf16 inputs on the CPU comes from :func:`cheap_dropout`; fp32 inputs and GPU
    tensors (a fused kernel there) go through ``F.dropout`` unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.dtype == torch.float32 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        return cheap_dropout(x, self.p)


class FastMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention-weight dropout under CPU autocast uses :func:`cheap_dropout`.

    In training, under CPU autocast, with dropout and without ``need_weights`` or ``attn_mask``, the attention is
    computed step by step: the input projections, ``softmax(q k^T / sqrt(d) + key padding)`` in fp32, dropout of
    those weights, the weighted sum of ``v``, the output projection (the math PyTorch's own unfused path does,
    whose dropout is a ``bernoulli_`` per weight). Everything else (fp32, eval, GPU, the attention recorder's
    ``need_weights=True``) is ``nn.MultiheadAttention`` unchanged.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (not self.training or self.dropout == 0 or need_weights or attn_mask is not None or is_causal
                or query.device.type != "cpu" or not self._qkv_same_embed_dim or self.bias_k is not None
                or self.batch_first or not torch.is_autocast_enabled("cpu")):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return self._train_attention(query, key, value, key_padding_mask), None

    def _train_attention(self, query, key, value, key_padding_mask):
        """``query`` ``[L,B,C]``, ``key``/``value`` ``[S,B,C]``, ``key_padding_mask`` bool ``[B,S]`` (True: ignore)
        -> ``[L,B,C]``. Heads are laid out as in ``F.multi_head_attention_forward`` (batch-major, ``b*H + h``)."""
        (L, B, C), S, H = query.shape, key.shape[0], self.num_heads
        D = C // H
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).reshape(L, B * H, D).transpose(0, 1)
        k = F.linear(key, w_k, b_k).reshape(S, B * H, D).transpose(0, 1)
        v = F.linear(value, w_v, b_v).reshape(S, B * H, D).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2)).float() * D ** -0.5  # [B*H, L, S]
        if key_padding_mask is not None:
            scores = scores.view(B, H, L, S).masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            scores = scores.view(B * H, L, S)
        weights = cheap_dropout(scores.softmax(-1), self.dropout)
        out = torch.bmm(weights, v)  # autocast casts both to bf16
        out = out.transpose(0, 1).reshape(L, B, C)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias)
