"""The weights of the parity fixture (``tests/data/parity``): every state-dict entry of DETR-R50 (parameters and
buffers) computed from its key and its full shape only, so the published model (in ``tools/make_parity_fixture.py``)
and the project's model (in ``tests/test_parity.py``) get identical values without sharing any code but this file.

The rule, for an entry ``key`` of shape ``shape`` (float32):

- random numbers come from a ``torch.Generator`` seeded with the first 8 bytes of
  ``sha256(RULE_VERSION + ":" + key)`` (little-endian, top bit cleared): stable across processes and machines,
  unlike Python's ``hash()``;
- ``query_embed.weight``: N(0, 1) drawn for ``[QUERY_ROWS, C]`` (the published 100 queries) and sliced to its
  first ``Q`` rows, so a 50-query model gets exactly the first 50 rows of the 100-query one. Decoder layers share
  key names across depths, so a 3-layer model gets exactly layers 0-2 of the 6-layer one: the rule weights of
  every variant equal the published surgery (keep the first layers / queries) of the 6/100 weights;
- frozen BatchNorm (``backbone.*`` 1-D entries): ``running_mean`` and ``bias`` 0.01·N(0, 1) (small: a per-channel
  shift is the same at every position, and large shifts drown the image's spatial variation within a few blocks),
  ``running_var`` U(0.5, 1.5) (positive), ``weight`` U(BN_SCALE) (so activations stay O(1) through the 16
  residual blocks: on the fixture's images every block's output has an rms of 0.2-1.1 and varies over positions
  by 60-74% of it);
- convolution weights (4-D): N(0, 1) · gain / sqrt(fan_in), gain sqrt(2) in the backbone (each is followed by a
  ReLU), 1 for ``input_proj``, then each output channel's filter made zero-mean, so the positive mean a ReLU adds
  is not passed on as a constant at every position;
- attention ``in_proj_weight`` [3C, C]: N(0, 1) / sqrt(C); in the decoder the query and key rows (the first 2C)
  times DECODER_QK_GAIN, so cross-attention is not uniform over the feature map and the queries differ from each
  other. The encoder keeps gain 1: sharper encoder attention also amplifies rounding (float32 reordering moved
  the logits by 2e-4 with gain 3 in the encoder, by 2e-5 without), which a 1e-4 parity test cannot afford;
- LayerNorm (``*norm*`` 1-D entries outside the backbone): weight 1 + 0.1·N(0, 1), bias 0.05·N(0, 1);
- ``class_embed.bias``: 0.02·N(0, 1), plus NO_OBJECT_BIAS on the last ("no object") logit;
- ``bbox_embed.layers.2.weight``: N(0, 1) / sqrt(fan_in) times BOX_HEAD_GAIN, so boxes spread over (0, 1);
- other biases: 0.02·N(0, 1); other weights (2-D): N(0, 1) / sqrt(fan_in), fan_in = shape[1].

With random weights a DETR's queries come out nearly alike; these choices keep them apart enough that on the
fixture's inputs every Hungarian matching wins by a cost margin far above float32 noise (the generator measures
and records it), so parity at 1e-4 implies identical matchings.

Used by ``tools/make_parity_fixture.py`` and ``tests/test_parity.py``; it imports neither the project nor the
published code.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

RULE_VERSION = "detr-parity-weights-v1"
QUERY_ROWS = 100  # query_embed.weight is always drawn for the published 100 queries, then sliced
BN_SCALE = (0.5, 1.0)  # frozen BatchNorm weight range
BN_SHIFT = 0.01  # std of frozen BatchNorm running_mean and bias
DECODER_QK_GAIN = 3.0
BOX_HEAD_GAIN = 3.0
NO_OBJECT_BIAS = 2.0


def _generator(key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{RULE_VERSION}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _normal(key: str, shape: Sequence[int]) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=_generator(key), dtype=torch.float32)


def _uniform(key: str, shape: Sequence[int], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=_generator(key), dtype=torch.float32)


def rule_tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The fixture's value of the state-dict entry ``key`` with shape ``shape``: float32 tensor of that shape."""
    shape = tuple(int(s) for s in shape)
    leaf = key.rsplit(".", 1)[-1]
    if key == "query_embed.weight":
        if shape[0] > QUERY_ROWS:
            raise ValueError(f"rule_tensor: query_embed.weight has {shape[0]} rows, the rule draws {QUERY_ROWS}")
        return _normal(key, (QUERY_ROWS, *shape[1:]))[: shape[0]].clone()
    if len(shape) == 1 and key.startswith("backbone."):  # frozen BatchNorm
        if leaf in ("running_mean", "bias"):
            return BN_SHIFT * _normal(key, shape)
        if leaf == "running_var":
            return _uniform(key, shape, 0.5, 1.5)
        if leaf == "weight":
            return _uniform(key, shape, *BN_SCALE)
        raise ValueError(f"rule_tensor: unexpected backbone buffer {key!r}")
    if len(shape) == 1 and "norm" in key:  # LayerNorm
        return 1.0 + 0.1 * _normal(key, shape) if leaf == "weight" else 0.05 * _normal(key, shape)
    if len(shape) == 1:
        bias = 0.02 * _normal(key, shape)
        if key == "class_embed.bias":
            bias[-1] += NO_OBJECT_BIAS
        return bias
    fan_in = math.prod(shape[1:])
    weight = _normal(key, shape) / math.sqrt(fan_in)
    if len(shape) == 4:  # convolution
        if key.startswith("backbone."):
            weight = weight * math.sqrt(2.0)
        return weight - weight.mean(dim=(1, 2, 3), keepdim=True)
    if leaf == "in_proj_weight" and key.startswith("transformer.decoder."):
        weight[: 2 * shape[1]] *= DECODER_QK_GAIN
    elif key == "bbox_embed.layers.2.weight":
        weight = weight * BOX_HEAD_GAIN
    return weight


def rule_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{key: rule_tensor(key, shape)}`` for every entry of ``state_dict`` (cast to each entry's dtype)."""
    return {k: rule_tensor(k, v.shape).to(v.dtype) for k, v in state_dict.items()}


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every entry's key, dtype, shape and bytes, in order: the fixture records it so a test can tell
    "the rule (or torch's random numbers) changed" apart from "the model changed"."""
    h = hashlib.sha256()
    for key, value in state_dict.items():
        h.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fill_with_rule(model: nn.Module) -> nn.Module:
    """Load the rule's value into every state-dict entry of ``model`` (``strict=True``) and return it."""
    model.load_state_dict(rule_state_dict(model.state_dict()), strict=True)
    return model
