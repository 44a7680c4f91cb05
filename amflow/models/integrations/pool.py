"""``pool``: the logits also get ``score_pool`` (zero at start) times the score-weighted mean of the
final-norm patch tokens, averaged over time, the scores being the last adapted block's: a path from the
scores to the prediction that the blocks' pre-norms cannot erase. The adapters run as ``tpa``'s."""
from __future__ import annotations

import torch
from torch import nn

from amflow.models.integrations.base import Integration, register


class Pool(Integration):
    feeds_adapter = False

    def head_weights(self, num_classes, dim):
        return nn.Parameter(torch.zeros(num_classes, dim))

    def head_features(self, tokens, scores, num_prefix):
        weights = scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-12)   # [B*T, N]
        return (weights.to(tokens.dtype)[..., None] * tokens[:, num_prefix:]).sum(dim=1)


register("pool", Pool())
