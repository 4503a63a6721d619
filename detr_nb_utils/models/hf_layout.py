"""The published DETR-R50's state dict under Hugging Face's names, both ways, and reading a Hugging Face checkpoint.

Hugging Face's ``DetrForObjectDetection`` holds the same weights as ``detr-r50-e632da11.pth`` under other names
(the layout of ``facebook/detr-resnet-50`` on the Hub, which ``save_pretrained`` writes):

- the transformer: ``transformer.encoder.layers.i.linear1`` is ``model.encoder.layers.i.fc1``, ``norm1`` is
  ``self_attn_layer_norm``, the decoder's ``multihead_attn`` is ``encoder_attn``, ``transformer.decoder.norm`` is
  ``model.decoder.layernorm``; each attention's packed ``in_proj_weight`` ``[3C, C]`` (and bias) is three
  ``q_proj``, ``k_proj``, ``v_proj`` of ``[C, C]``, its rows in that order;
- the heads and embeddings: ``class_embed`` / ``class_labels_classifier``, ``bbox_embed`` / ``bbox_predictor``,
  ``query_embed`` / ``model.query_position_embeddings``, ``input_proj`` / ``model.input_projection``;
- the ResNet-50 under ``model.backbone.conv_encoder.model.``, in one of two layouts (:data:`BACKBONE_LAYOUTS`):
  ``"timm"`` (``facebook/detr-resnet-50``'s ``use_timm_backbone=True``: torchvision's own names, ``layer1.0.conv1``)
  or ``"transformers"`` (transformers' ``ResNetBackbone``, ``use_timm_backbone=False``, as on the Hub's ``no_timm``
  revision: ``encoder.stages.0.layers.0.layer.0.convolution``, ``...normalization``, ``...shortcut``).

Every tensor is carried bit for bit (the q/k/v split is a slice, the merge a concatenation), so official -> Hugging
Face -> official returns the same bytes. Newer transformers name a few modules differently in memory (``o_proj``,
``mlp.fc1``, no ``conv_encoder``) but save the Hub's names; :func:`hf_to_official` accepts both.

:func:`read_hf_checkpoint` reads a Hugging Face folder (``model.safetensors``, sharded safetensors or
``pytorch_model.bin``, with ``config.json``) or a lone ``.safetensors`` file into the official layout, refusing
anything but a DETR-R50 detector; :func:`~detr_nb_utils.models.checkpoint.load_pretrained` calls it for such a
path, so every notebook's ``checkpoint`` accepts Hugging Face weights. Reading safetensors needs the ``safetensors``
package (the ``export`` extra); nothing else here does. Used by :mod:`detr_nb_utils.export`.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

#: how to install the optional packages the Hugging Face and ONNX paths need
EXPORT_EXTRA = "pip install -e '.[export]'"
BACKBONE_LAYOUTS = ("transformers", "timm")
HF_BACKBONE = "model.backbone.conv_encoder.model."
OFFICIAL_BACKBONE = "backbone.0.body."
#: ResNet-50's bottleneck blocks per stage (layer1..layer4)
R50_BLOCKS = (3, 4, 6, 3)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_INDEX = "model.safetensors.index.json"
_LEGACY = "pytorch_model.bin"

# (official module path, Hugging Face module path): {i} is a layer index, the leaf (weight, bias, ...) carries over
_TRANSFORMER = (
    ("transformer.encoder.layers.{i}.self_attn.out_proj", "model.encoder.layers.{i}.self_attn.out_proj"),
    ("transformer.encoder.layers.{i}.linear1", "model.encoder.layers.{i}.fc1"),
    ("transformer.encoder.layers.{i}.linear2", "model.encoder.layers.{i}.fc2"),
    ("transformer.encoder.layers.{i}.norm1", "model.encoder.layers.{i}.self_attn_layer_norm"),
    ("transformer.encoder.layers.{i}.norm2", "model.encoder.layers.{i}.final_layer_norm"),
    ("transformer.decoder.layers.{i}.self_attn.out_proj", "model.decoder.layers.{i}.self_attn.out_proj"),
    ("transformer.decoder.layers.{i}.multihead_attn.out_proj", "model.decoder.layers.{i}.encoder_attn.out_proj"),
    ("transformer.decoder.layers.{i}.linear1", "model.decoder.layers.{i}.fc1"),
    ("transformer.decoder.layers.{i}.linear2", "model.decoder.layers.{i}.fc2"),
    ("transformer.decoder.layers.{i}.norm1", "model.decoder.layers.{i}.self_attn_layer_norm"),
    ("transformer.decoder.layers.{i}.norm2", "model.decoder.layers.{i}.encoder_attn_layer_norm"),
    ("transformer.decoder.layers.{i}.norm3", "model.decoder.layers.{i}.final_layer_norm"),
    ("transformer.decoder.norm", "model.decoder.layernorm"),
    ("class_embed", "class_labels_classifier"),
    ("bbox_embed.layers.{i}", "bbox_predictor.layers.{i}"),
    ("query_embed", "model.query_position_embeddings"),
    ("input_proj", "model.input_projection"),
)
# the attentions whose packed in_proj is split into q/k/v: (official module, Hugging Face module)
_ATTENTIONS = (
    ("transformer.encoder.layers.{i}.self_attn", "model.encoder.layers.{i}.self_attn"),
    ("transformer.decoder.layers.{i}.self_attn", "model.decoder.layers.{i}.self_attn"),
    ("transformer.decoder.layers.{i}.multihead_attn", "model.decoder.layers.{i}.encoder_attn"),
)
# torchvision's ResNet names (after backbone.0.body.) -> transformers' ResNetBackbone names; {s} stage, {b} block
_TRANSFORMERS_RESNET = (
    ("conv1", "embedder.embedder.convolution"),
    ("bn1", "embedder.embedder.normalization"),
    ("layer{s}.{b}.conv{j}", "encoder.stages.{s}.layers.{b}.layer.{j}.convolution"),
    ("layer{s}.{b}.bn{j}", "encoder.stages.{s}.layers.{b}.layer.{j}.normalization"),
    ("layer{s}.{b}.downsample.0", "encoder.stages.{s}.layers.{b}.shortcut.convolution"),
    ("layer{s}.{b}.downsample.1", "encoder.stages.{s}.layers.{b}.shortcut.normalization"),
)
# index shifts between the two sides of _TRANSFORMERS_RESNET: torchvision counts stages and convs from 1
_SHIFT = {"s": 1, "j": 1}
# names newer transformers use in memory, and the Hub names they save under
_IN_MEMORY = ((re.compile(r"^model\.backbone\.model\."), HF_BACKBONE), (re.compile(r"\.o_proj\."), ".out_proj."),
              (re.compile(r"\.mlp\.(fc[12])\."), r".\1."))


class HFCheckpointError(ValueError):
    """A path that is not a readable Hugging Face DETR-R50 checkpoint; the message names it and the fix.
    :func:`~detr_nb_utils.models.checkpoint.load_pretrained` raises it as its ``CheckpointError``."""


class HFLayoutError(KeyError):
    """A state dict that is not a DETR-R50 in either layout; ``str()`` says which keys and why."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def require(module: str, purpose: str):
    """``import module``, or an ``ImportError`` naming what needs it and the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs the package {module.split('.')[0]!r}, which is not installed: "
                          f"{EXPORT_EXTRA} (the 'export' extra). ({e})") from None


@functools.lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    """``"a.{i}.b"`` -> a regex matching ``a.<int>.b.<leaf>`` with groups ``i`` and ``leaf``."""
    body = re.escape(template)
    for name in ("i", "s", "b", "j"):
        body = body.replace(re.escape("{" + name + "}"), f"(?P<{name}>\\d+)")
    return re.compile(f"^{body}\\.(?P<leaf>[A-Za-z_]+)$")


def _rename(key: str, rules, forward: bool, shift: Mapping[str, int] | None = None) -> str | None:
    """``key`` renamed by the first rule whose source side matches it (``forward``: left -> right), or None."""
    for left, right in rules:
        src, dst = (left, right) if forward else (right, left)
        m = _pattern(src).match(key)
        if m:
            groups = {k: int(v) for k, v in m.groupdict().items() if k != "leaf"}
            for name, by in (shift or {}).items():
                if name in groups:
                    groups[name] += -by if forward else by
            return dst.format(**groups) + "." + m["leaf"]
    return None


def official_to_hf(state_dict: Mapping[str, torch.Tensor], backbone: str = "transformers") -> dict[str, torch.Tensor]:
    """The official-layout ``state_dict`` under Hugging Face's names (``backbone``: one of :data:`BACKBONE_LAYOUTS`).

    Every entry maps, or :class:`HFLayoutError` names those that do not (e.g. the tiny DETR's backbone, which has no
    Hugging Face counterpart). The q/k/v tensors are views into the packed ones, not copies.
    """
    if backbone not in BACKBONE_LAYOUTS:
        raise ValueError(f"backbone must be one of {BACKBONE_LAYOUTS}, got {backbone!r}")
    out, unmapped = {}, []
    for key, value in state_dict.items():
        if key.startswith(OFFICIAL_BACKBONE):
            name = key[len(OFFICIAL_BACKBONE):]
            new = name if backbone == "timm" else _rename(name, _TRANSFORMERS_RESNET, True, _SHIFT)
            if new is None or not _is_resnet_key(name):
                unmapped.append(key)
                continue
            out[HF_BACKBONE + new] = value
        elif key.endswith((".in_proj_weight", ".in_proj_bias")):
            module, leaf = key.rsplit(".", 1)
            target = _rename(module + ".x", _ATTENTIONS, True)
            if target is None:
                unmapped.append(key)
                continue
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{target[:-2]}.{part}_proj.{leaf[len('in_proj_'):]}"] = chunk
        else:
            new = _rename(key, _TRANSFORMER, True)
            if new is None:
                unmapped.append(key)
                continue
            out[new] = value
    if unmapped:
        raise HFLayoutError(f"{len(unmapped)} entries have no Hugging Face name (first: {unmapped[:3]}): only the "
                            f"DETR-R50 family (a ResNet-50 backbone) maps onto DetrForObjectDetection")
    return out


def _is_resnet_key(name: str) -> bool:
    """Whether ``name`` (after ``backbone.0.body.``) is a torchvision ResNet entry: the stem or a bottleneck's."""
    return bool(re.match(r"^(conv1|bn1)\.\w+$|^layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01])\.\w+$", name))


def hf_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face DETR-R50 state dict (either backbone layout, Hub or in-memory names) in the official layout,
    in the official key order for each part. BatchNorm ``num_batches_tracked`` entries (timm's) are dropped: the
    published frozen BatchNorm has none. Unknown keys, a missing q/k/v part or a backbone that is not ResNet-50
    (another number of blocks per stage) raise :class:`HFLayoutError` naming them."""
    backbone, attn, rest, unmapped = {}, {}, {}, []
    for key, value in state_dict.items():
        for pattern, repl in _IN_MEMORY:
            key = pattern.sub(repl, key)
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(HF_BACKBONE):
            name = key[len(HF_BACKBONE):]
            tv = _rename(name, _TRANSFORMERS_RESNET, False, _SHIFT)
            tv = tv if tv is not None else name
            if not _is_resnet_key(tv):
                unmapped.append(key)
                continue
            backbone[OFFICIAL_BACKBONE + tv] = value
        elif (m := re.match(r"^(.*)\.([qkv])_proj\.(weight|bias)$", key)) and _rename(m[1] + ".x", _ATTENTIONS, False):
            attn.setdefault((_rename(m[1] + ".x", _ATTENTIONS, False)[:-2], m[3]), {})[m[2]] = value
        elif (new := _rename(key, _TRANSFORMER, False)) is not None:
            rest[new] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise HFLayoutError(f"{len(unmapped)} entries are not those of a Hugging Face DETR-R50 detector "
                            f"(first: {unmapped[:3]})")
    for (module, leaf), parts in attn.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise HFLayoutError(f"{module}: the attention's {leaf} has only the {sorted(parts)} projections")
        rest[f"{module}.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    _check_resnet50(backbone)
    return {**dict(sorted(rest.items(), key=lambda kv: _official_rank(kv[0]))),
            **dict(sorted(backbone.items(), key=lambda kv: _backbone_rank(kv[0])))}


def _check_resnet50(backbone: Mapping[str, torch.Tensor]) -> None:
    blocks = {}
    for key in backbone:
        m = re.match(rf"^{re.escape(OFFICIAL_BACKBONE)}layer(\d)\.(\d+)\.", key)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    found = tuple(blocks.get(s, 0) for s in range(1, 5))
    if found != R50_BLOCKS:
        raise HFLayoutError(f"the backbone has {found} bottleneck blocks per stage, ResNet-50 has {R50_BLOCKS}: only "
                            f"DETR-R50 (e.g. facebook/detr-resnet-50) loads into build_detr")


def _official_rank(key: str) -> tuple:
    """Sort key giving the published state dict's order after the backbone's: transformer (encoder, decoder layers
    by index, each layer's modules in registration order, weight before bias), heads, queries, input projection."""
    order = ("transformer.encoder", "transformer.decoder.layers", "transformer.decoder.norm", "class_embed",
             "bbox_embed", "query_embed", "input_proj")
    part = next(i for i, p in enumerate(order) if key.startswith(p))
    m = re.search(r"layers\.(\d+)\.(.*)$", key)
    module, leaf = key.rsplit(".", 1)
    sub = m[2].rsplit(".", 1)[0] if m and "." in m[2] else ""
    return (part, int(m[1]) if m else -1, _LAYER_ORDER.get(sub, 99), module, "bias" in leaf)


_RESNET_MODULES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1")
_LEAVES = ("weight", "bias", "running_mean", "running_var")


def _backbone_rank(key: str) -> tuple:
    """Sort key giving torchvision's ResNet order: the stem, then each stage's blocks, each block's modules in
    registration order, BatchNorm entries as ``FrozenBatchNorm2d`` registers them."""
    name = key[len(OFFICIAL_BACKBONE):]
    module, leaf = name.rsplit(".", 1)
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", module)
    stage, block, module = (int(m[1]), int(m[2]), m[3]) if m else (0, 0, module)
    return stage, block, _RESNET_MODULES.index(module), _LEAVES.index(leaf) if leaf in _LEAVES else 99


# the published layers' registration order of their submodules, so a converted state dict reads like the official
_LAYER_ORDER = {name: i for i, name in enumerate(
    ("self_attn", "self_attn.out_proj", "multihead_attn", "multihead_attn.out_proj", "linear1", "linear2", "norm1",
     "norm2", "norm3"))}


# ---- reading a Hugging Face checkpoint ------------------------------------------------------------------------


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hugging Face checkpoint: a ``.safetensors`` file, or a folder holding one of
    :data:`WEIGHT_FILES` or a transformers ``config.json`` (one with a ``model_type``; a run folder's config has
    none)."""
    path = Path(path)
    if not path.is_dir():
        return path.suffix == ".safetensors"
    if any((path / f).is_file() for f in WEIGHT_FILES):
        return True
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_hf_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The official-layout state dict of a Hugging Face DETR-R50 checkpoint, and its ``config.json`` (``{}`` for a
    lone ``.safetensors`` file).

    ``path``: a folder as ``save_pretrained`` writes it or as downloaded from the Hub (``model.safetensors``, a
    sharded ``model.safetensors.index.json`` with its shards, or ``pytorch_model.bin`` read with
    ``weights_only=True``), or one ``.safetensors`` file. A config that describes something else than the
    published architecture's computation (another backbone, dilation, learned positions, pre-norm) is refused, as
    is a state dict that is not DETR-R50's. Errors are :class:`HFCheckpointError` naming the path and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise HFCheckpointError(f"{path} does not exist: pass a Hugging Face DETR folder (config.json and "
                                f"model.safetensors) or a .safetensors file")
    config = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except (OSError, ValueError) as e:
                raise HFCheckpointError(f"{path / 'config.json'} does not read as JSON ({e}); download the folder "
                                        f"again") from None
            _check_config(config, path)
        raw = _read_folder(path)
    else:
        raw = _read_safetensors(path)
    try:
        return hf_to_official(raw), config
    except HFLayoutError as e:
        raise HFCheckpointError(f"{path} is not a Hugging Face DETR-R50 checkpoint: {e}. Use facebook/detr-resnet-50 "
                                f"(either revision) or a folder written by `python -m detr_nb_utils.export --to hf`") \
            from None


def _check_config(config: dict, path: Path) -> None:
    problems = []
    if config.get("model_type") != "detr":
        problems.append(f"model_type is {config.get('model_type')!r}, not 'detr'")
    if config.get("dilation"):
        problems.append("dilation is on (DETR-DC5), build_detr has no dilated backbone")
    if config.get("position_embedding_type", "sine") != "sine":
        problems.append(f"position_embedding_type is {config['position_embedding_type']!r}, not 'sine'")
    if config.get("normalize_before"):
        problems.append("normalize_before (pre-norm) is on, the published DETR is post-norm")
    backbone = config.get("backbone") or (config.get("backbone_config") or {}).get("backbone")
    depths = (config.get("backbone_config") or {}).get("depths")
    if backbone not in (None, "resnet50") or depths not in (None, list(R50_BLOCKS)):
        problems.append(f"its backbone is {backbone or 'a ResNet with blocks ' + str(depths)}, not ResNet-50")
    if problems:
        raise HFCheckpointError(f"{path} describes another model than DETR-R50: {'; '.join(problems)}. Only the "
                                f"DETR-R50 family (e.g. facebook/detr-resnet-50) loads into build_detr.")


def _read_folder(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        return _read_safetensors(path / "model.safetensors")
    if (path / _INDEX).is_file():
        try:
            shards = sorted(set(json.loads((path / _INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise HFCheckpointError(f"{path / _INDEX} is not a safetensors index ({type(e).__name__}: {e}); download "
                                    f"the folder again") from None
        out = {}
        for shard in shards:
            out.update(_read_safetensors(path / shard))
        return out
    if (path / _LEGACY).is_file():  # pickled weights: read only through the project's one .pth reader's rules
        raise HFCheckpointError(f"{path} holds its weights only as {_LEGACY} (PyTorch's pickle format); this project "
                                f"reads Hugging Face weights as safetensors: download model.safetensors too (the Hub's "
                                f"facebook/detr-resnet-50 has it), or load the folder in transformers and "
                                f"save_pretrained() it, which writes safetensors")
    raise HFCheckpointError(f"{path} holds no weights: none of {', '.join(WEIGHT_FILES)}. Download the whole model "
                            f"folder (or pass the .pth of the official checkpoint instead)")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    st = require("safetensors.torch", "reading Hugging Face weights (.safetensors)")
    if not path.is_file():
        raise HFCheckpointError(f"{path} does not exist (a shard of the folder is missing); download it again")
    try:
        return st.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise HFCheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]}); download it again") from None
