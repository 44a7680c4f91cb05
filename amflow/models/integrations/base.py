"""The contract of an AM flow integration: how AM flow's scores ``[B*T, N]`` (one per patch token and
frame) enter a model (``model.am_flow.integration``), and the registry of integrations by name.

An integration acts in the temporal processing adapter (:class:`amflow.models.adapters.TemporalProcessingAdapter`)
around its TPU, or in the video model's head. Every parameter it adds starts at zero and is created
without drawing random numbers, so an untrained ``amflow`` computes exactly what ``tpa`` built from the
same seed does (``gate`` alone changes the forward pass from the start). Its parameters are named
``score_*``: ``VideoModel.integration_norms`` reports them and checkpoints keep them under those names.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from amflow.models.context import ClipContext
from amflow.registry import Registry


def with_prefix(values: torch.Tensor, num_prefix: int, fill: float) -> torch.Tensor:
    """Per-patch ``[B*T, N, ...]`` -> per-token ``[B*T, prefix + N, ...]``, prefix tokens set to ``fill``."""
    pad = values.new_full((values.shape[0], num_prefix, *values.shape[2:]), fill)
    return torch.cat([pad, values], dim=1)


class Integration:
    """One way in for the scores; the hooks a subclass leaves alone change nothing."""

    feeds_adapter = True  # False: the scores act in the head only; the adapters run as tpa's

    def add_parameters(self, adapter: nn.Module, tpu: nn.Module, tpu_name: str, bottleneck: int,
                       tpu_heads: int) -> None:
        """Add this integration's zero-initialised ``score_*`` parameters to ``adapter``."""

    def before_tpu(self, adapter: nn.Module, z: torch.Tensor, scores: torch.Tensor,
                   ctx: ClipContext) -> tuple[torch.Tensor, dict]:
        """The bottleneck tokens ``z`` ``[B*T, L, r]`` before the TPU, and extra keyword arguments for it."""
        return z, {}

    def after_tpu(self, adapter: nn.Module, z: torch.Tensor, scores: torch.Tensor, ctx: ClipContext) -> torch.Tensor:
        """The TPU's output ``[B*T, L, r]`` before the activation and the up-projection."""
        return z

    def head_weights(self, num_classes: int, dim: int) -> Optional[nn.Parameter]:
        """A zero-initialised ``[num_classes, dim]`` map of :meth:`head_features` to the logits, or None."""
        return None

    def head_features(self, tokens: torch.Tensor, scores: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """``[B*T, D]`` from the final-norm tokens ``[B*T, L, D]`` and the last adapted block's scores."""
        raise NotImplementedError


INTEGRATIONS: Registry[Integration] = Registry("AM flow integration")


def register(name: str, integration: Integration) -> Integration:
    return INTEGRATIONS.register(name, integration)
