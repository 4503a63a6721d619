"""The encoder-decoder transformer of DETR (post-norm), sequence-first tensors.

The published computation; the fast mode's cheaper dropout and attention live in :mod:`.fast`. Used by
:func:`~detr_nb_utils.models.detr.build_detr`. Shapes: ``S`` = H·W feature positions, ``B`` batch,
``Q`` queries, ``C`` = ``d_model`` (256), ``L`` decoder layers.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class EncoderLayer(nn.Module):
    """Self-attention + FFN, each followed by residual and LayerNorm; positions added to q and k only."""

    def __init__(self, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 2048,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, key_padding_mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``src``, ``pos``: ``[S,B,C]``; ``key_padding_mask``: bool ``[B,S]``. Returns ``[S,B,C]``."""
        q = k = src + pos
        attn = self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, FFN; post-norm after each."""

    def __init__(self, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 2048,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_key_padding_mask: torch.Tensor,
                pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """``tgt``, ``query_pos``: ``[Q,B,C]``; ``memory``, ``pos``: ``[S,B,C]``. Returns ``[Q,B,C]``."""
        q = k = tgt + query_pos
        attn = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.multihead_attn(tgt + query_pos, memory + pos, value=memory,
                                   key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class Encoder(nn.Module):
    """A stack of post-norm encoder layers; no final norm (the published model has none)."""

    def __init__(self, layer: EncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src, key_padding_mask, pos):
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src


class Decoder(nn.Module):
    """A stack of decoder layers and one shared final LayerNorm applied to every layer's output.

    The next layer receives the un-normalised output; the normalised ones feed the prediction heads.
    """

    def __init__(self, layer: DecoderLayer, num_layers: int, d_model: int = 256) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, memory_key_padding_mask, pos, query_pos) -> torch.Tensor:
        """Returns the normalised output of every layer, ``[L,Q,B,C]``."""
        states = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos)
            states.append(self.norm(tgt))
        return torch.stack(states)


class Transformer(nn.Module):
    """DETR's transformer: ``enc_layers`` encoder and ``dec_layers`` decoder layers, post-norm."""

    def __init__(self, d_model: int = 256, nhead: int = 8, enc_layers: int = 6, dec_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model = d_model
        self.encoder = Encoder(EncoderLayer(d_model, nhead, dim_feedforward, dropout), enc_layers)
        self.decoder = Decoder(DecoderLayer(d_model, nhead, dim_feedforward, dropout), dec_layers, d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, mask: torch.Tensor, query_embed: torch.Tensor,
                pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``src`` ``[B,C,h,w]`` (projected features), ``mask`` bool ``[B,h,w]``, ``query_embed`` ``[Q,C]``,
        ``pos`` ``[B,C,h,w]``. Returns decoder states ``[L,B,Q,C]`` and memory ``[B,C,h,w]``."""
        b, c, h, w = src.shape
        # (S, B, C), made contiguous: a linear layer on the permuted view cannot be one matrix product, and PyTorch
        # then multiplies per position with the weight copied S times (benchmarks/RESULTS.md)
        src = src.flatten(2).permute(2, 0, 1).contiguous()
        pos = pos.flatten(2).permute(2, 0, 1).contiguous()
        query_pos = query_embed.unsqueeze(1).repeat(1, b, 1)  # (Q, B, C)
        mask = mask.flatten(1)  # (B, S)
        memory = self.encoder(src, mask, pos)
        tgt = torch.zeros_like(query_pos)  # the decoder starts from zeros; queries enter as positions
        hs = self.decoder(tgt, memory, mask, pos, query_pos)  # (L, Q, B, C)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(b, c, h, w)
