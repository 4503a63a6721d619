"""Loading the official DETR checkpoint safely, and adapting it to a variant (model surgery).

The official file ``detr-r50-e632da11.pth`` is a dict whose ``model`` entry is the state dict of the published DETR-R50
(6 decoder layers, 100 queries, 91 classes). Variants keep the first ``dec_layers`` decoder layers and the first
``num_queries`` query embeddings; a dataset with its own classes gets a class head built row by row from the
checkpoint's (:mod:`.class_head`), or a fresh one. Used by 02_checkpoint_inspection and, through the engine, 03-05.
Downloading the file is :func:`detr_nb_utils.data.download.download_checkpoint`; the demo's random-weight stand-in is
:func:`detr_nb_utils.data.synthetic.make_random_checkpoint`.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from . import hf_layout
from .class_head import remap_class_head

GET_IT = "python -m detr_nb_utils.data.download checkpoint --dest data/checkpoints"
_DEC_LAYER = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.")
# The reference training script saves its argparse.Namespace beside the weights; it is plain data, so allow it.
torch.serialization.add_safe_globals([argparse.Namespace])
_REQUIRED = ("class_embed.weight", "query_embed.weight", "input_proj.weight", "transformer.decoder.norm.weight")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with each state-dict entry.

    ``rows``: ``(key, action, checkpoint_shape, model_shape)`` with action one of ``loaded``, ``sliced``,
    ``remapped`` (the class head, row by row), ``dropped``, ``re-initialised``. Renders as a table in a notebook.
    """

    path: str
    rows: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    random_weights: bool = False
    #: per class of the model, where its class-head row came from (:func:`.class_head.class_sources`; set by the
    #: engine, which knows the class names)
    class_sources: pd.DataFrame | None = None

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["key", "action", "checkpoint_shape", "model_shape"])

    def summary(self) -> pd.Series:
        """Number of entries per action."""
        return self.to_frame()["action"].value_counts()

    def keys(self, action: str) -> list[str]:
        return [r[0] for r in self.rows if r[1] == action]

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {a}" for a, n in self.summary().items())
        note = "  [RANDOM WEIGHTS: demo stand-in, not the official checkpoint]" if self.random_weights else ""
        return f"{self.path}: {counts}{note}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        changed = self.to_frame().query("action != 'loaded'")
        return f"<p>{self}</p>" + changed.to_html(index=False)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict in a DETR checkpoint file, and whether it is marked as random weights.

    Loads with ``weights_only=True``: a file that holds pickled Python objects is refused, since
    unpickling a file from the internet can run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Download the official one with `{GET_IT}`, "
                              "or pass the right path as `checkpoint`.")
    corrupt = (f"checkpoint {path} is truncated or corrupt ({{}}). "
               f"Delete it and download it again with `{GET_IT}`.")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):  # torch's zip format, or its legacy pickle format
        raise CheckpointError(corrupt.format(f"starts with {head!r}, not a PyTorch file"))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # the weights-only unpickler names the global it refused
            raise CheckpointError(corrupt.format(str(e).splitlines()[0])) from None
        raise CheckpointError(f"checkpoint {path} holds pickled Python objects, which could run code when loaded, "
                              f"so it is refused. Use the official file (`{GET_IT}`) or re-save the weights as a "
                              f"plain dict of tensors. ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(corrupt.format(str(e).splitlines()[0])) from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(k in sd for k in _REQUIRED):
        raise CheckpointError(f"{path} is not a DETR checkpoint: expected a dict with a 'model' state dict holding "
                              f"{', '.join(_REQUIRED)}. Use the official file (`{GET_IT}`).")
    return sd, bool(isinstance(obj, dict) and obj.get("random_weights", False))


def checkpoint_dims(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """``dec_layers``, ``num_queries`` and ``num_classes`` of a DETR state dict."""
    layers = {int(m.group(1)) for k in state_dict if (m := _DEC_LAYER.match(k))}
    return {"dec_layers": max(layers) + 1 if layers else 0,
            "num_queries": state_dict["query_embed.weight"].shape[0],
            "num_classes": state_dict["class_embed.weight"].shape[0] - 1}


def adapt_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module, path: str = "<state dict>",
                     query_indices: Sequence[int] | None = None, class_rows: Sequence[int | None] | None = None,
                     fresh_head: bool = False) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Model surgery: the state dict ``model`` needs, built from a bigger checkpoint.

    Keeps decoder layers ``0 … model.dec_layers-1`` (and the shared final decoder norm), the rows ``query_indices`` of
    ``query_embed.weight`` (default: the first ``model.num_queries``, the original study's choice). The class head:
    ``class_rows`` (one per model class, :func:`.class_head.class_rows`) builds it row by row
    (:func:`.class_head.remap_class_head`: the checkpoint's row, or the model's fresh one where None; "no object"
    carried), action ``remapped``; ``fresh_head`` takes the model's own (fresh) head whole, as does a head of another
    size without ``class_rows``. Every kept tensor is the checkpoint's, bit for bit.
    """
    dims = checkpoint_dims(state_dict)
    for name, want in (("dec_layers", model.dec_layers), ("num_queries", model.num_queries)):
        if want > dims[name]:
            raise CheckpointError(f"{path} has {dims[name]} {name.replace('_', ' ')}, the model asks for {want}: "
                                  f"choose {name} <= {dims[name]}.")
    rows = _query_rows(query_indices, model.num_queries, dims["num_queries"])
    own = model.state_dict()
    report, new = LoadReport(str(path)), {}
    if class_rows is not None and len(class_rows) != model.num_classes:
        raise CheckpointError(f"class_rows lists {len(class_rows)} classes, the model has {model.num_classes}")
    head = None if class_rows is None or fresh_head else remap_class_head(
        state_dict["class_embed.weight"], state_dict["class_embed.bias"], class_rows,
        own["class_embed.weight"], own["class_embed.bias"])
    for key, target in own.items():
        src = state_dict.get(key)
        if src is None:
            raise CheckpointError(f"{path} is not a DETR-R50 checkpoint: it lacks {key}. Use the official file.")
        if key.startswith("class_embed.") and fresh_head:
            new[key], action = target, "re-initialised"
        elif key.startswith("class_embed.") and head is not None:
            new[key], action = head[key == "class_embed.bias"], "remapped"
        elif src.shape == target.shape and not (key == "query_embed.weight" and query_indices is not None):
            new[key], action = src, "loaded"
        elif key == "query_embed.weight":
            new[key], action = src[rows].clone(), "sliced"
        elif key.startswith("class_embed.") and dims["num_classes"] != model.num_classes:
            new[key], action = target, "re-initialised"
        else:
            raise CheckpointError(f"{path}: {key} has shape {tuple(src.shape)}, the model needs "
                                  f"{tuple(target.shape)}; this checkpoint does not fit build_detr's architecture.")
        report.rows.append((key, action, tuple(src.shape), tuple(target.shape)))
    for key in sorted(state_dict.keys() - own.keys(), key=list(state_dict).index):
        report.rows.append((key, "dropped", tuple(state_dict[key].shape), ()))
    return new, report


def _query_rows(query_indices: Sequence[int] | None, num_queries: int, available: int) -> torch.Tensor:
    if query_indices is None:
        return torch.arange(num_queries)
    rows = torch.as_tensor(list(query_indices), dtype=torch.int64)
    if rows.numel() != num_queries or len(set(rows.tolist())) != num_queries:
        raise CheckpointError(f"query_indices must list {num_queries} distinct query slots (the model's num_queries), "
                              f"got {rows.numel()} ({len(set(rows.tolist()))} distinct).")
    if rows.min() < 0 or rows.max() >= available:
        raise CheckpointError(f"query_indices must lie in 0..{available - 1} (the checkpoint's queries), "
                              f"got {rows.min().item()}..{rows.max().item()}.")
    return rows


def load_pretrained(model: nn.Module, path: str | os.PathLike, query_indices: Sequence[int] | None = None,
                    class_rows: Sequence[int | None] | None = None, fresh_head: bool = False) -> LoadReport:
    """Load a DETR checkpoint into ``model`` (strictly, after :func:`adapt_state_dict`) and report what changed.

    ``path``: a DETR checkpoint file, or Hugging Face DETR-R50 weights (a folder or ``.safetensors`` file,
    :func:`.hf_layout.read_hf_checkpoint`). ``query_indices``: which of the checkpoint's query embeddings to keep, in
    order (default: the first ``model.num_queries``); ``class_rows`` and ``fresh_head``: how the class head starts
    (:func:`adapt_state_dict`).
    """
    if hf_layout.is_hf_checkpoint(path):  # a Hugging Face folder or .safetensors file (facebook/detr-resnet-50)
        try:
            sd, random_weights = hf_layout.read_hf_checkpoint(path)[0], False
        except hf_layout.HFCheckpointError as e:
            raise CheckpointError(str(e)) from None
    else:
        sd, random_weights = read_checkpoint(path)
    new, report = adapt_state_dict(sd, model, str(path), query_indices, class_rows, fresh_head)
    model.load_state_dict(new, strict=True)
    report.random_weights = random_weights
    return report
