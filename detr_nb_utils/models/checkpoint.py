"""Reading checkpoint files safely, and adapting the official DETR checkpoint to a variant (model surgery).

:func:`read_checkpoint` is the one way the package reads a ``.pth`` file (the official checkpoint, the demo's tiny
DETR, a run folder's ``checkpoint_best.pth`` and ``checkpoint_last.pth``, predict's ``--checkpoint`` and ``--run``):
the bytes are checked first (a file by the official name against the published size and hashes,
:mod:`.official`; any other in torch's zip format entry by entry against its CRC-32, so flipped bytes are named
instead of loaded), then it is unpickled with ``weights_only=True``. Every problem is one
:class:`CheckpointError` naming the file, what is wrong and what to do.

The official file ``detr-r50-e632da11.pth`` is a dict whose ``model`` entry is the state dict of the published
DETR-R50 (6 decoder layers, 100 queries, 91 classes). Variants keep the first ``dec_layers`` decoder layers and the
first ``num_queries`` query embeddings; a dataset with its own classes gets a class head built row by row from the
checkpoint's (:mod:`.class_head`), or a fresh one. Used by 02_checkpoint_inspection and, through the engine, 03-05.
Downloading the file is :func:`detr_nb_utils.data.download.download_checkpoint`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from . import hf_layout
from .class_head import remap_class_head
from .official import GET_IT, OFFICIAL, check_official

_DEC_LAYER = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.")
_REQUIRED = ("class_embed.weight", "query_embed.weight", "input_proj.weight", "transformer.decoder.norm.weight")
#: types a checkpoint may hold besides tensors and plain containers, allowed only while one is read: the published
#: training script saves its argparse.Namespace (plain data) beside the weights
SAFE_TYPES: tuple[type, ...] = (argparse.Namespace,)
#: what to do with a checkpoint that cannot be used, unless the caller knows better (a run folder's files)
DEFAULT_FIX = f"Delete it and download the official file again with `{GET_IT}`, or pass the right path."
_ZIP_MAGIC, _LEGACY_MAGIC = b"PK\x03\x04", b"\x80"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file, what is wrong and what to do. ``path`` and
    ``reason`` (what is wrong, without the advice) let a caller give its own advice."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path, self.reason = (Path(path) if path is not None else None), reason


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with each state-dict entry.

    ``rows``: ``(key, action, checkpoint_shape, model_shape)`` with action one of ``loaded``, ``sliced``,
    ``remapped`` (the class head, row by row), ``dropped``, ``re-initialised``. Renders as a table in a notebook.
    """

    path: str
    rows: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
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
        return f"{self.path}: " + ", ".join(f"{n} {a}" for a, n in self.summary().items())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        changed = self.to_frame().query("action != 'loaded'")
        return f"<p>{self}</p>" + changed.to_html(index=False)


def file_damage(path: str | os.PathLike) -> str | None:
    """What is wrong with the bytes of the PyTorch file ``path``, or None when nothing is found: empty, not a
    PyTorch file, truncated, or an entry of torch's zip format whose CRC-32 fails (``torch.load`` itself reads
    garbled tensor data without complaint). Reads the whole file; a file in the legacy (pre-zip) format has no
    checksums, so only its start is checked."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "it is empty (0 bytes)"
    if head[:1] == _LEGACY_MAGIC:
        return None
    if head != _ZIP_MAGIC:
        return f"it starts with {head!r}, not a PyTorch file"
    if not zipfile.is_zipfile(path):
        return (f"it is truncated: it ends after {path.stat().st_size:,} bytes, before the zip directory PyTorch "
                "writes last")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        return f"its zip structure is broken ({e})"
    return None if bad is None else (f"its entry {bad} fails its CRC-32 check: the bytes on disk changed after "
                                     "the file was written")


@contextlib.contextmanager
def _allowing(types: Sequence[type]) -> Iterator[None]:
    """Allow ``types`` in a ``weights_only`` load inside the block only, leaving torch's global allow-list as it
    was (``torch.serialization.safe_globals``; torch 2.4 lacks it: add, then restore the list)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        with scoped(list(types)):
            yield
        return
    saved = list(torch.serialization.get_safe_globals())
    torch.serialization.add_safe_globals(list(types))
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def _unpickle(path: Path) -> object:
    """``torch.load`` with ``weights_only=True``, :data:`SAFE_TYPES` allowed: the package's one call of it."""
    with _allowing(SAFE_TYPES):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | os.PathLike, fix: str = DEFAULT_FIX) -> dict:
    """Every entry of a DETR checkpoint file, checked: ``model`` (the state dict; a file holding a bare state dict
    gets it under this key) and whatever else it holds (``config``, ``arch``, ``epoch``, ``optimizer``, ...), so no
    caller reads a file twice.

    Before unpickling: a file named like the official checkpoint must be it (size, SHA-384, SHA-256 prefix, hashed
    once per process, :func:`.official.check_official`); any other in torch's zip format has every entry's CRC-32
    checked (:func:`file_damage`). Then ``torch.load(weights_only=True)``: a file that holds pickled Python objects
    is refused, since unpickling a file from the internet can run arbitrary code (only :data:`SAFE_TYPES` are
    allowed, and only during this call). Raises :class:`CheckpointError` naming the file, what is wrong and
    ``fix`` (what to do).
    """
    path = Path(path)

    def fail(clause: str, advice: str = fix) -> CheckpointError:
        """``checkpoint <path> <clause>. <advice>``; the reason a caller sees is the clause about "it"."""
        what = clause.removeprefix("is damaged: ") if clause.startswith("is damaged: ") else f"it {clause}"
        return CheckpointError(f"checkpoint {path} {clause}. {advice}", path, what)

    if not path.is_file():
        raise fail("does not exist" if not path.exists() else "is not a file")
    if (problem := check_official(path)) is not None:
        raise fail(f"is not the published {OFFICIAL.name} ({problem}): it was damaged or replaced after its "
                   f"download", f"Delete it and download it again with `{GET_IT}`.")
    if path.name != OFFICIAL.name and (what := file_damage(path)) is not None:
        raise fail(f"is damaged: {what}")
    try:
        obj = _unpickle(path)
    except pickle.UnpicklingError as e:
        first = _detail(str(e))
        if "global" in str(e).lower():  # the weights-only unpickler names the global it refused
            raise fail(f"holds pickled Python objects, which could run code when loaded, so it is refused ({first})",
                       f"Use the official file (`{GET_IT}`) or re-save the weights as a plain dict of tensors.") \
                from None
        raise fail(f"is damaged: {_legacy_reason(path, str(e))}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise fail(f"is damaged: {_legacy_reason(path, str(e) or type(e).__name__)}") from None
    entries = obj if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else {"model": obj}
    sd = entries["model"]
    if not isinstance(sd, dict) or not all(k in sd for k in _REQUIRED):
        raise fail(f"is not a DETR checkpoint: expected a dict with a 'model' state dict holding "
                   f"{', '.join(_REQUIRED)}",
                   f"Use the official file (`{GET_IT}`) or a run folder's checkpoint_best.pth.")
    return entries


def _detail(error: str) -> str:
    """The line of PyTorch's reading error that says what is wrong: the weights-only unpickler's own words (torch
    2.4 puts them after a generic first line), else the first line."""
    lines = [line.strip() for line in error.splitlines() if line.strip()] or ["no message"]
    marker = "WeightsUnpickler error: "
    return next((line.split(marker, 1)[1] for line in lines if marker in line), lines[0])


def _legacy_reason(path: Path, error: str) -> str:
    """PyTorch's reading error, called truncation where a file in the legacy format ends early."""
    ends_early = any(w in error.lower() for w in ("truncated", "ran out of input", "unexpected eof", "eof"))
    with open(path, "rb") as f:
        legacy = f.read(1) == _LEGACY_MAGIC
    if legacy and ends_early:
        return f"it is truncated: it ends after {path.stat().st_size:,} bytes ({_detail(error)})"
    return f"PyTorch cannot read it ({_detail(error)})"


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
    """Load a DETR checkpoint into ``model`` (read and checked by :func:`read_checkpoint`, then loaded strictly after
    :func:`adapt_state_dict`) and report what changed.

    ``path``: a DETR checkpoint file, or Hugging Face DETR-R50 weights (a folder or ``.safetensors`` file,
    :func:`.hf_layout.read_hf_checkpoint`). ``query_indices``: which of the checkpoint's query embeddings to keep, in
    order (default: the first ``model.num_queries``); ``class_rows`` and ``fresh_head``: how the class head starts
    (:func:`adapt_state_dict`).
    """
    if hf_layout.is_hf_checkpoint(path):  # a Hugging Face folder or .safetensors file (facebook/detr-resnet-50)
        try:
            sd = hf_layout.read_hf_checkpoint(path)[0]
        except hf_layout.HFCheckpointError as e:
            raise CheckpointError(str(e)) from None
    else:
        sd = read_checkpoint(path)["model"]
    new, report = adapt_state_dict(sd, model, str(path), query_indices, class_rows, fresh_head)
    model.load_state_dict(new, strict=True)
    return report
