"""A DETR-R50 checkpoint in the official layout with RANDOM weights: the test suite's and the benchmarks' stand-in
for ``detr-r50-e632da11.pth`` (which cannot be downloaded where the tests run). Not part of the package: nothing a
user runs loads random weights.

Imported as ``from random_checkpoint import make_random_checkpoint`` (``tests/`` is not a package: pytest puts it on
the path; ``benchmarks/bench_step.py`` adds it).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detr_nb_utils.data import atomic
from detr_nb_utils.models.detr import build_detr


@torch.no_grad()
def make_random_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """An official-layout checkpoint (``{"model": state_dict}``) with random weights at ``path``; reused when it
    already exists.

    The frozen BatchNorm statistics are calibrated on noise images so activations keep a unit scale through
    the 50 layers (an un-normalised random ResNet would blow them up by orders of magnitude).
    """
    path = Path(path)
    if path.is_file():
        return path
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = build_detr().eval()
        _calibrate_frozen_bn(model.backbone[0].body, torch.randn(2, 3, 224, 224))
    return atomic.torch_save({"model": model.state_dict(),
                              "note": f"random weights (seed {seed}), not the official DETR checkpoint"}, path)


def _calibrate_frozen_bn(body: nn.Module, images: torch.Tensor) -> None:
    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        body(images)
    finally:
        for h in hooks:
            h.remove()
