"""Temporal processing units: what a TPA does along time at each token position (docs/design.md 2.6).

Every unit maps ``[S, T, r]`` (S independent sequences: one per clip and token position) to the same
shape and is residual, so the gated bottleneck signal always reaches the up-projection.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from amflow.errors import AmflowError
from amflow.models.config import AdapterConfig
from amflow.params import TPUS



class TransformerTPU(nn.Module):
    """One pre-norm ``nn.TransformerEncoderLayer`` over T, with a learned temporal position embedding."""

    def __init__(self, dim: int, num_frames: int, heads: int):
        super().__init__()
        self.temporal_pos = nn.Parameter(torch.zeros(1, num_frames, dim))
        nn.init.trunc_normal_(self.temporal_pos, std=0.02)
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                                activation="gelu", batch_first=True, norm_first=True)

    def forward(self, z: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``bias`` ``[S * heads, T, T]``: added to the attention logits (AM flow's ``attn_bias``)."""
        h = z + self.temporal_pos
        if bias is None:
            return self.layer(h)
        # The layer's own steps, spelled out: its inference fast path returns NaN for a per-sequence
        # 3-D float mask (torch 2.x), so the biased layer never takes it.
        layer = self.layer
        a = layer.norm1(h)
        h = h + layer.dropout1(layer.self_attn(a, a, a, attn_mask=bias, need_weights=False)[0])
        ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h)))))
        return h + layer.dropout2(ff)


class TemporalConvTPU(nn.Module):
    """Dilated, centred (non-causal) 1-D convolutions over T, each with a residual connection."""

    def __init__(self, dim: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel, dilation=d, padding=d * (kernel - 1) // 2) for d in dilations)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = z.transpose(1, 2)               # Conv1d wants [S, r, T]
        for conv in self.convs:
            y = y + F.gelu(conv(y))
        return y.transpose(1, 2)


class LSTMTPU(nn.Module):
    """A bidirectional LSTM over T, projected from 2r back to r.

    The recurrence runs in float32 even under autocast: autocast would run the LSTM in half
    precision, where rounding compounds over the time steps (and cuDNN's fp16 path is the one
    autocast picks for it on CUDA).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            seq = self.lstm(z.float())[0]
        return z + self.proj(seq)


def build_tpu(spec: AdapterConfig, num_frames: int) -> nn.Module:
    r = spec.bottleneck
    if spec.tpu == "transformer":
        if r % spec.tpu_heads:
            raise AmflowError(f"model.adapter.tpu_heads ({spec.tpu_heads}) must divide "
                              f"model.adapter.bottleneck ({r})")
        return TransformerTPU(r, num_frames, spec.tpu_heads)
    if spec.tpu == "tcn":
        if spec.tcn_kernel % 2 == 0:
            raise AmflowError(f"model.adapter.tcn_kernel must be odd for centred convolutions "
                              f"(got {spec.tcn_kernel})")
        if not spec.tcn_dilations or min(spec.tcn_dilations) < 1:
            raise AmflowError(f"model.adapter.tcn_dilations must be positive integers "
                              f"(got {spec.tcn_dilations})")
        return TemporalConvTPU(r, spec.tcn_kernel, spec.tcn_dilations)
    if spec.tpu == "lstm":
        return LSTMTPU(r)
    if spec.tpu == "none":
        return nn.Identity()
    raise AmflowError(f"model.adapter.tpu must be one of {TPUS}, got {spec.tpu!r}")


def to_sequences(z: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[B*T, L, ...]`` -> ``[B*L, T, ...]``: one sequence over time per clip and token position."""
    BT, L = z.shape[:2]
    B = BT // num_frames
    return z.reshape(B, num_frames, L, -1).transpose(1, 2).reshape(B * L, num_frames, *z.shape[2:])


def over_time(unit: nn.Module, z: torch.Tensor, num_frames: int, **kwargs) -> torch.Tensor:
    """Apply ``unit`` along time at every token position: ``[B*T, L, r]`` in and out."""
    BT, L, r = z.shape
    B = BT // num_frames
    seq = unit(to_sequences(z, num_frames), **kwargs)
    return seq.view(B, L, num_frames, r).transpose(1, 2).reshape(BT, L, r)
