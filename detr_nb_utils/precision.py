"""Where and in which number format the model runs: the device, bf16 autocast, channels_last.

The fast mode (``precision="bf16"``, ``channels_last=True``) runs only the model's forward under bf16 autocast,
with the backbone's frozen BatchNorms folded into their convolutions (and, on the CPU, cheaper dropout masks: see
:mod:`detr_nb_utils.transformer`); its outputs are cast back to fp32 before matching, losses and post-processing.
``fp32`` is the published computation. Used by :mod:`detr_nb_utils.engine` and :mod:`detr_nb_utils.evaluate`
(notebooks 02-05).
"""
from __future__ import annotations

import ctypes
import sys

import torch
from torch import nn

from .backbone import set_batchnorm_folding

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device when there is one, else the CPU (MPS only when asked for)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but MPS is not available here; use device='auto' or 'cpu'")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (Intel AMX, or AVX512-BF16 as on AMD Zen 4)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Let the process reuse freed tensor memory instead of handing every large buffer back to the OS (glibc).

    With glibc's defaults every buffer over 32 MiB (or over its adaptive threshold) is a fresh ``mmap``: each
    forward pass page-faults its activations in again, about 160,000 faults per step for a batch of two 512x512
    images, a fifth of an eval forward on a 2-core CPU. Raising the mmap and trim thresholds to ``threshold_bytes``
    keeps freed memory for the next step; the process then holds on to its peak memory. It changes no value
    computed. Linux with glibc only; returns whether it was applied. Called by the benchmarks for CPU runs.
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


def resolve_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``torch.bfloat16`` or ``None`` (plain fp32).

    ``"auto"`` picks bf16 on CUDA GPUs that support it and on CPUs with :func:`cpu_has_fast_bf16`, else fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be one of 'fp32', 'bf16', 'auto', got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def resolve_channels_last(channels_last: bool | None, amp_dtype: torch.dtype | None) -> bool:
    """``None`` (the config's default): channels-last exactly when the forward runs under autocast (the fast mode;
    fp32 keeps the published layout). ``True``/``False``: as asked."""
    return amp_dtype is not None if channels_last is None else bool(channels_last)


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

    Under autocast the backbone's frozen BatchNorms are folded into their convolutions for the call
    (:func:`detr_nb_utils.backbone.set_batchnorm_folding`): bf16 activations straight out of each convolution.

    ``images``: ``[B,3,H,W]`` on the model's device; ``mask``: ``[B,H,W]`` bool, True on padding.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if amp_dtype is None:
        return model(images, mask)
    set_batchnorm_folding(model, True)
    try:
        with torch.autocast(images.device.type, dtype=amp_dtype):
            outputs = model(images, mask)
    finally:
        set_batchnorm_folding(model, False)  # a plain ``model(...)`` call stays the published computation
    return to_float(outputs)
