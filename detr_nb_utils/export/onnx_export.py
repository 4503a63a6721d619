"""A DETR of this project as one ONNX file for ONNX Runtime: input ``images`` (float32 ``[N,3,H,W]``, normalised as
the validation transform, unpadded), outputs ``pred_logits`` ``[N,Q,K+1]`` and ``pred_boxes`` ``[N,Q,4]`` (cx, cy,
w, h in [0, 1]) as the published model names them; the batch, height and width are dynamic. Every backbone
exports, the tiny demo one too.

The graph is the model in eval mode without auxiliary outputs, with an all-False padding mask: the images of one
batch share one size (pad none; run images of other sizes in their own batches, as the positional encoding and
the attention of a padded image depend on its padding). With torch >= 2.5 the exporter is ``torch.export``'s (the
one PyTorch develops, default since 2.9; it needs ``onnxscript``), traced on a batch of 2 so that no size is
specialised to 1; older torch uses its TorchScript exporter. :func:`export_onnx` checks the file with ONNX
Runtime against PyTorch before renaming it into place. Needs the ``export`` extra (onnx, onnxruntime, onnxscript).
Used by ``python -m detr_nb_utils.export --to onnx``.
"""
from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models.detr import DETR
from ..models.hf_layout import require
from .output import ExportError, staged_file

INPUT, OUTPUTS = "images", ("pred_logits", "pred_boxes")
OPSET = 18
#: how close ONNX Runtime's outputs must be to PyTorch's (logits and boxes, max |difference|)
TOLERANCE = 1e-4


class ImagesOnly(nn.Module):
    """``model`` called on unpadded images alone: ``images [N,3,H,W]`` -> ``(pred_logits, pred_boxes)``."""

    def __init__(self, model: DETR) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(images.shape[0], images.shape[2], images.shape[3], dtype=torch.bool, device=images.device)
        out = self.model(images, mask)
        return out["pred_logits"], out["pred_boxes"]


def _exporter_options() -> dict:
    """``torch.onnx.export`` keywords: the ``torch.export`` exporter with dynamic shapes where this torch has it,
    else the TorchScript exporter with dynamic axes."""
    params = inspect.signature(torch.onnx.export).parameters
    dim = getattr(getattr(torch.export, "Dim", None), "DYNAMIC", None)
    if "dynamo" in params and "external_data" in params and dim is not None:
        require("onnxscript", "the ONNX export")
        return {"dynamo": True, "external_data": False,
                "dynamic_shapes": {INPUT: {0: dim, 2: dim, 3: dim}}}
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, **{o: {0: "batch"} for o in OUTPUTS}}
    return {"dynamic_axes": axes}


def export_onnx(model: DETR, out: str | os.PathLike, *, example_size: tuple[int, int] = (96, 128),
                overwrite: bool = False, check: bool = True) -> Path:
    """Write ``model`` as the ONNX file ``out`` (see the module docstring), traced on a random batch of 2 images of
    ``example_size`` (h, w) pixels. ``check``: run the file with ONNX Runtime on images of another size and batch
    and compare with PyTorch (:func:`check_onnx`) before renaming it into place. An existing ``out`` is refused
    unless ``overwrite``. Returns ``out``."""
    require("onnx", "the ONNX export")
    h, w = example_size
    if h < 32 or w < 32:
        raise ExportError(f"example_size must be at least 32x32 px (a ResNet-50 feature map of 1x1), got {h}x{w}")
    wrapper = ImagesOnly(model).eval()
    was_training, aux = model.training, model.aux_loss
    model.eval()
    model.aux_loss = False
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    try:
        with staged_file(out, overwrite) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            torch.onnx.export(wrapper, (example,), str(tmp), input_names=[INPUT], output_names=list(OUTPUTS),
                              opset_version=OPSET, **_exporter_options())
            if check:
                check_onnx(model, tmp, sizes=((h + 32, w - 32), (h, w)))
    finally:
        model.train(was_training)
        model.aux_loss = aux
    return Path(out)


@torch.no_grad()
def check_onnx(model: DETR, path: str | os.PathLike, sizes=((128, 96), (96, 128)),
               batches=(1, 3)) -> dict[tuple, dict[str, float]]:
    """Run the ONNX file ``path`` with ONNX Runtime (CPU) on random images of each of ``sizes`` (h, w) with the
    matching batch of ``batches``, and compare with ``model`` in PyTorch. Returns ``{(batch, h, w): {"pred_logits":
    max |diff|, "pred_boxes": ...}}``; raises :class:`ExportError` past :data:`TOLERANCE`."""
    ort = require("onnxruntime", "checking the ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = ImagesOnly(model).eval()
    g = torch.Generator().manual_seed(1)
    out = {}
    for (h, w), n in zip(sizes, batches):
        images = torch.randn(n, 3, h, w, generator=g)
        expected = wrapper(images)
        got = session.run(list(OUTPUTS), {INPUT: images.numpy()})
        out[(n, h, w)] = {name: float((torch.from_numpy(g_) - e).abs().max()) for name, g_, e in
                          zip(OUTPUTS, got, expected)}
    worst = max(d for v in out.values() for d in v.values())
    if worst > TOLERANCE:
        raise ExportError(f"ONNX Runtime's outputs differ from PyTorch's by up to {worst:.2e} (more than "
                          f"{TOLERANCE:g}): {out}; the export was not written")
    return out
