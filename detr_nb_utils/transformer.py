"""The encoder-decoder transformer of DETR (post-norm), sequence-first tensors.

Used by :func:`detr_nb_utils.model.build_detr`. Shapes: ``S`` = H·W feature positions, ``B`` batch,
``Q`` queries, ``C`` = ``d_model`` (256), ``L`` decoder layers.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def cheap_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` with a keep mask drawn from 16-bit random integers.

    Four 16-bit draws come from each 64-bit draw of the default generator (seeded by ``torch.manual_seed``): on
    CPUs where PyTorch's ``bernoulli_`` runs a serial per-element sampler (every non-Intel CPU) this is about
    three times faster. The drop probability is ``p`` rounded to a multiple of 2^-16 (0.1 -> 0.100006); kept
    values are scaled by ``1 / (1 - p)`` as in ``F.dropout``, rounded once.
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


class Dropout(nn.Dropout):
    """``nn.Dropout``, with a cheaper random mask for bf16 inputs on the CPU (the fast mode's autocast activations).

    fp32 inputs and GPU tensors (a fused kernel there) go through ``F.dropout`` unchanged (the published
    computation). For other dtypes on the CPU the mask comes from :func:`cheap_dropout`: dropout is an eighth of a
    fast-mode training step on CPUs where ``bernoulli_`` is a serial sampler.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.dtype == torch.float32 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        return cheap_dropout(x, self.p)


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same parameters, same state-dict keys), whose attention-weight dropout in the
    CPU fast mode uses :func:`cheap_dropout`.

    In training, under CPU autocast, with dropout and without ``need_weights`` or ``attn_mask``, the attention is
    computed step by step: the input projections, ``softmax(q k^T / sqrt(d) + key padding)`` in fp32, dropout of
    those weights, the weighted sum of ``v``, the output projection (the math PyTorch's own unfused path does; its
    dropout there is a ``bernoulli_`` per weight, about 60 ms of a 512x512 training step on an AMD CPU). Everything
    else (fp32, eval, GPU, the attention recorder's ``need_weights=True``) is ``nn.MultiheadAttention`` unchanged.
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


class EncoderLayer(nn.Module):
    """Self-attention + FFN, each followed by residual and LayerNorm; positions added to q and k only."""

    def __init__(self, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 2048,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

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
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)

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
        # then multiplies per position with the weight copied S times (about 20x slower in bf16 on the CPU)
        src = src.flatten(2).permute(2, 0, 1).contiguous()
        pos = pos.flatten(2).permute(2, 0, 1).contiguous()
        query_pos = query_embed.unsqueeze(1).repeat(1, b, 1)  # (Q, B, C)
        mask = mask.flatten(1)  # (B, S)
        memory = self.encoder(src, mask, pos)
        tgt = torch.zeros_like(query_pos)  # the decoder starts from zeros; queries enter as positions
        hs = self.decoder(tgt, memory, mask, pos, query_pos)  # (L, Q, B, C)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(b, c, h, w)
