"""Sine positional encoding of DETR (Carion et al. 2020, Sec. 3.2 and appendix A.4).

Used by every notebook through :mod:`detr_nb_utils.models.detr`; it has no parameters.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding computed from the padding mask.

    Positions count valid (unpadded) pixels only and are normalised by the number of valid
    positions in their row or column, so an image gets the same encoding whatever padding its
    batch adds.

    Args:
        num_pos_feats: features per axis (128, so y and x together give ``hidden_dim`` 256).
        temperature: base of the geometric frequency ladder (10000).
        scale: range the normalised coordinates are stretched to (2π).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0,
                 scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: bool ``[B, H, W]``, True on padding. Returns float32 ``[B, 2*num_pos_feats, H, W]``:
        channels ``0..num_pos_feats-1`` encode y, the rest encode x."""
        valid = ~mask
        # float32 cumulative sums: the first valid position is 1, not 0
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * self.scale  # divide by the column's count of valid rows
        x = x / (x[:, :, -1:] + eps) * self.scale  # divide by the row's count of valid columns

        k = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.num_pos_feats)
        return torch.cat((self._interleave(y[..., None] / dim_t),
                          self._interleave(x[..., None] / dim_t)), dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _interleave(t: torch.Tensor) -> torch.Tensor:
        # [B, H, W, F] -> [sin(t0), cos(t1), sin(t2), cos(t3), ...]; t0 == t1 since dim_t pairs repeat
        return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=4).flatten(3)
