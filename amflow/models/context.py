"""What every adapted block needs to know about the clip it is processing.

The backbone runs on ``B*T`` frames at once; the adapters regroup tokens along time, so they need
``T``, the number of prefix (CLS + register) tokens, the patch grid, and for AM flow the settings, the
camera alignment of the clip (aligned variant) and the score of a fixed source layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from amflow.models.am_flow import PatchAlignment, am_flow, rank_matched_scores, shuffle_scores
from amflow.models.config import AmFlowConfig


@dataclass
class ClipContext:
    batch: int
    frames: int
    num_prefix: int
    grid: tuple[int, int]
    flow: Optional[AmFlowConfig] = None              # None: the model uses no AM flow
    alignment: Optional[PatchAlignment] = None     # aligned variant only
    fixed_scores: Optional[torch.Tensor] = None    # [B*T, N] when flow.source is a block index
    record: Optional[dict[int, torch.Tensor]] = field(default=None)  # block -> scores, for plots
    # Scores computed before the blocks run: block -> [B*T, N] (pixel-warp variant), or one
    # [B*T, N] for every block that replaces AM flow (the oracle, footprint and uniform controls).
    block_scores: Optional[dict[int, torch.Tensor]] = None
    replacement: Optional[torch.Tensor] = None
    coverage: Optional[torch.Tensor] = None        # [B*T, N] the actor's share of each patch (rank_matched)
    head_scores: Optional[torch.Tensor] = None     # [B*T, N] what the 'pool' integration weights tokens by
    floors: dict[int, float] = field(default_factory=dict)   # block -> absolute noise floor (noise_floor)

    @property
    def same_block_source(self) -> bool:
        return self.flow is not None and self.flow.source == "same"

    @property
    def needs_own_map(self) -> bool:
        """Whether an adapted block must compute its own attention map for its scores."""
        return self.same_block_source and self.block_scores is None and self.replacement is None

    def scores_from_map(self, block: int, patch_map: torch.Tensor) -> torch.Tensor:
        """AM flow scores ``[B*T, N]`` from one block's patch maps ``[B*T, N, N]``.

        Computed without autograd: the backbone is frozen and the score is used as a fixed saliency
        gate (like an optical-flow input), so no gradient should reach earlier adapters through the
        attention maps; it also keeps the ``B x (T-1) x N x N`` differences out of the backward graph.
        """
        N = patch_map.shape[-1]
        with torch.no_grad():
            maps = patch_map.view(self.batch, self.frames, N, N)
            scores = am_flow(maps, self.flow.temperature, self.flow.normalise, self.alignment,
                             self.flow.aligned_floor, self.floors.get(block, 0.0))
            scores = scores.reshape(self.batch * self.frames, N)
        if self.record is not None:
            self.record[block] = scores
        return scores

    def scores_for(self, block: int, patch_map: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The scores of ``block``: its own map's AM flow, precomputed ones (pixel warp, a replacing
        control), the fixed source's, or None without AM flow; permuted within each frame for
        ``control: shuffled``, reassigned by the actor's coverage for ``control: rank_matched``."""
        if self.flow is None:
            return None
        if self.replacement is not None:
            scores = self.replacement
        elif self.block_scores is not None:
            scores = self.block_scores[block if self.same_block_source else int(self.flow.source)]
        elif patch_map is not None:
            scores = self.scores_from_map(block, patch_map)
        else:
            scores = self.fixed_scores
        if self.flow.control == "shuffled":
            scores = shuffle_scores(scores)
        elif self.flow.control == "rank_matched":
            scores = rank_matched_scores(scores, self.coverage)
        if self.record is not None and (self.replacement is not None or self.block_scores is not None
                                        or self.flow.control != "none"):
            self.record[block] = scores
        return scores
