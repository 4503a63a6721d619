"""What each variant costs: parameters, GFLOPs at 800x1066 and inference latency, in one table.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on the *meta* device: the model's
parameters and buffers are swapped for storage-less meta tensors (:func:`torch.func.functional_call`), so the
count runs the full forward's shapes in well under a second with no arithmetic. FlopCounterMode counts matrix
products and convolutions only (``mm``, ``addmm``, ``bmm``, ``convolution``, the attention kernels), a
multiply-add as **2** FLOPs; normalisations, activations, softmax and the sine positions are not counted. The
paper's 86 GFLOPs come from Detectron2's ``flop_count_operators`` (fvcore), which counts a multiply-add as
**1** flop and averages over the first 100 COCO val2017 images at their own sizes, so compare its number with
half of ours (``gmacs``), and expect some difference from the image sizes.

Why the meta device and not a CPU forward: on the CPU, ``nn.MultiheadAttention`` with ``need_weights=False``
runs ``aten._scaled_dot_product_flash_attention_for_cpu``, for which FlopCounterMode has no formula, so the
attention products (``QK^T`` and ``AV``) would silently be left out; on the meta device they run as ``bmm`` and
are counted. DETR's compute does not depend on the weights' values, so the demo's random checkpoint gives the
study's FLOPs and latencies. Used by 06_analysis.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from ..models.detr import build_detr, parameter_table
from ..models.fast import model_forward, set_fast_mode

COST_SIZE = (800, 1066)  # a 640x480 COCO image (the commonest) after the validation resize


def _meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` as a meta tensor of the same shape and dtype (no storage)."""
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {k: torch.empty_like(v, device="meta") for k, v in named.items()}


def flop_counts(model: nn.Module, image_size: tuple[int, int] = COST_SIZE) -> dict[str, dict[str, int]]:
    """FlopCounterMode's table for one image of ``image_size`` ``(H, W)`` pixels (no padding), counted on the
    meta device: module name (``"Global"`` for the total, then ``"DETR.backbone"``, ...) -> aten op -> FLOPs."""
    h, w = image_size
    images = torch.empty(1, 3, h, w, device="meta")
    mask = torch.zeros(1, h, w, dtype=torch.bool, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        functional_call(model, _meta_state(model), (images, mask))
    return {module: {str(op): int(n) for op, n in ops.items()} for module, ops in counter.get_flop_counts().items()}


def count_gflops(model: nn.Module, image_size: tuple[int, int] = COST_SIZE) -> float:
    """GFLOPs (1e9, a multiply-add = 2 FLOPs) of one forward of ``model`` on one ``image_size`` image.

    Counted on the meta device (see the module docstring: what is counted, and why not on the CPU); ``model``
    may live on any device, or be a meta skeleton. The published DETR-R50 at 800x1066 gives about 162.5,
    i.e. 81.2 GMACs against the paper's 86 (its average over real image sizes, in multiply-adds).
    """
    return sum(flop_counts(model, image_size)["Global"].values()) / 1e9


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, image_size: tuple[int, int] = COST_SIZE, device: torch.device | str = "cpu",
                    amp_dtype: torch.dtype | None = None, warmup: int = 1, repeats: int = 3) -> dict:
    """Seconds per image of an eval-mode forward (batch 1, ``torch.inference_mode``) on ``device``.

    ``model`` must already be on ``device``; its train/eval mode is restored afterwards. ``warmup`` forwards are
    not timed; returns ``median_s`` (the number to report), ``min_s``, ``max_s``, and what was measured
    (``device``, ``image_size``, ``repeats``, ``amp``, ``threads``: torch's intra-op CPU threads).
    """
    device = torch.device(device)
    if _device_of(model).type != device.type:
        raise ValueError(f"measure_latency: the model is on {_device_of(model)}, not on device={device}; "
                         f"move it with model.to(device) first")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"measure_latency: warmup must be >= 0 and repeats >= 1, got {warmup}, {repeats}")
    h, w = image_size
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.zeros(1, h, w, dtype=torch.bool, device=device)
    was_training, times = model.training, []
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(device)
                start = time.perf_counter()
                model_forward(model, images, mask, amp_dtype)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "device": str(device),
            "image_size": f"{h}x{w}", "repeats": repeats, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype
            else "fp32", "threads": torch.get_num_threads()}


def cost_table(variants: Mapping[str, nn.Module], image_size: tuple[int, int] = COST_SIZE,
               device: torch.device | str | None = "cpu", latency_size: tuple[int, int] | None = None,
               amp_dtype: torch.dtype | None = None, warmup: int = 1, repeats: int = 3) -> pd.DataFrame:
    """One row per variant (name -> model): ``parameters``, ``trainable`` (:func:`~detr_nb_utils.models.detr.
    parameter_table`), ``gflops`` and ``gmacs`` at ``image_size``, and the median ``latency_ms`` per image on
    ``device`` at ``latency_size`` (default ``image_size``; the demo passes a small size to stay fast), with
    ``latency_device`` and ``latency_size``. ``device=None`` skips the latency (e.g. for meta skeletons).
    The notebooks join AP from the run folders onto it by variant name.
    """
    rows = {}
    for name, model in variants.items():
        params = parameter_table(model).loc["total"]
        gflops = count_gflops(model, image_size)
        row = {"parameters": int(params["parameters"]), "trainable": int(params["trainable"]),
               "gflops": gflops, "gmacs": gflops / 2}
        if device is not None:
            lat = measure_latency(model, latency_size or image_size, device, amp_dtype, warmup, repeats)
            row |= {"latency_ms": 1000 * lat["median_s"], "latency_device": lat["device"],
                    "latency_size": lat["image_size"]}
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def variant_costs(variants: Mapping[str, tuple], latency_size: tuple[int, int], device,
                  arch: Mapping | None = None, image_size: tuple[int, int] = COST_SIZE) -> pd.DataFrame:
    """:func:`cost_table` of each variant (name -> (decoder layers, queries, ...)): parameters,
    GFLOPs at ``image_size`` (default 800x1066), CPU latency at ``latency_size``, and GPU latency
    (``latency_ms_gpu``, bf16 autocast as the engine uses) when ``device`` is a CUDA device. ``arch``: the other
    :func:`build_detr` arguments (a run's ``cfg.arch``; default: the published DETR-R50). Weights are random: cost
    does not depend on them."""
    models = {name: build_detr(**(arch or {}), dec_layers=v[0], num_queries=v[1]).eval()
              for name, v in variants.items()}
    table = cost_table(models, tuple(image_size), device="cpu", latency_size=tuple(latency_size))
    if torch.device(device).type == "cuda":
        gpu = cost_table({n: set_fast_mode(m.to(device), True) for n, m in models.items()}, device=device,
                         latency_size=tuple(latency_size), amp_dtype=torch.bfloat16, repeats=10)
        table["latency_ms_gpu"] = gpu["latency_ms"]
    return table
