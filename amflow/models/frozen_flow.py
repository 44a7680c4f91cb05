"""AM flow of the *frozen* backbone's blocks, computed apart from any adapter.

Used where the scores must not depend on the adapted stream: a fixed source block
(``am_flow.source: <index>``), the pixel-warp aligned variant (``am_flow.alignment: warp``) and the
localisation measurement (:mod:`amflow.stages.localise`), which has no adapters at all.

Variants (``mode``):

- ``static``: ``|A_t - A_{t+1}|``.
- ``grid``: frame t+1's map resampled on frame t's patch grid (:func:`amflow.models.am_flow.patch_alignment`).
- ``warp``: frame t+1 is warped into frame t in pixel space with the camera transform, the frozen blocks
  run on the warped frame, and its maps are compared with frame t's; patches the warp leaves
  (partly) uncovered are left out and get the neutral score. Sub-patch camera motion is then
  compensated where the grid variant can only interpolate between patches. Costs one more frozen
  pass over T-1 frames up to the deepest block asked for.
- ``warp_fill``: ``warp`` scoring every patch. The strip frame t+1 does not cover already holds frame
  t's own pixels (:func:`amflow.models.am_flow.warp_to_previous`), so it shows no change and the
  covered part of a border patch keeps its signal; leaving those patches out costs a 4 x 4 grid 4 to
  7 of its 16 patches under a pan, and most of the localisation the compensation wins (docs/method.md).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from amflow.models.am_flow import am_flow, am_flow_pairs, covered_patches, patch_alignment, warp_to_previous
from amflow.models.attention import attention_branch, mlp_branch
from amflow.models.backbone import embed_frames, num_prefix_tokens, patch_grid, patch_size
from amflow.models.config import AmFlowConfig
from amflow.params import ALIGNMENTS

MODES = ("static", *ALIGNMENTS)
PIXEL_WARPS = ("warp", "warp_fill")   # the alignments that warp frames, not attention maps


def frozen_block_maps(backbone: nn.Module, frames: torch.Tensor, blocks: Iterable[int]) -> dict[int, torch.Tensor]:
    """Patch attention maps ``[M, N, N]`` of ``blocks`` for frames ``[M, 3, H, W]`` (no gradients)."""
    with torch.no_grad():
        return token_block_maps(backbone, embed_frames(backbone, frames), blocks)


def token_block_maps(backbone: nn.Module, x: torch.Tensor, blocks: Iterable[int]) -> dict[int, torch.Tensor]:
    """:func:`frozen_block_maps` from the embedded tokens ``[M, prefix + N, D]`` (the compensation
    measurements embed frames their own way, with moved position embeddings)."""
    wanted = sorted(set(int(b) for b in blocks))
    prefix = num_prefix_tokens(backbone)
    maps: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i, blk in enumerate(backbone.blocks[:wanted[-1] + 1]):
            if i not in wanted:
                x = blk(x)
                continue
            update, maps[i] = attention_branch(blk, x, prefix, need_map=True)
            x = x + update
            x = x + mlp_branch(blk, x)
    return maps


def noise_levels(backbone: nn.Module, still: torch.Tensor) -> torch.Tensor:
    """Each block's noise level ``[depth]``: the median over clips of the mean ``|A_t - A_{t+1}|`` of
    ``still`` clips ``[M, T, 3, H, W]`` (normalised; :func:`amflow.data.still_clips.still_clips`), whose
    frames differ by sensor and codec noise only."""
    M, T = still.shape[:2]
    depth = len(backbone.blocks)
    maps = frozen_block_maps(backbone, still.flatten(0, 1), range(depth))
    levels = torch.zeros(depth)
    for b, m in maps.items():
        m = m.float().view(M, T, *m.shape[-2:])
        levels[b] = (m[:, :-1] - m[:, 1:]).abs().mean(dim=(1, 2, 3)).median()
    return levels


def noise_floors(spec: AmFlowConfig, levels: Optional[torch.Tensor]) -> dict[int, float]:
    """Absolute floors per block: ``spec.noise_floor`` times the block's noise level (empty when off)."""
    if levels is None or spec.noise_floor <= 0:
        return {}
    return {b: float(spec.noise_floor * v) for b, v in enumerate(levels.tolist())}


def frozen_scores(backbone: nn.Module, video: torch.Tensor, transforms: Optional[torch.Tensor],
                  spec: AmFlowConfig, mode: str, blocks: Iterable[int],
                  floors: Optional[dict[int, float]] = None) -> dict[int, torch.Tensor]:
    """AM flow ``[B, T, N]`` of each of ``blocks`` of the frozen ``backbone`` for ``video`` ``[B, T, 3, H, W]``.

    ``transforms`` ``[B, T-1, 3, 3]`` (frame t -> t+1 pixels) are needed by every mode but ``static``;
    ``floors`` are absolute noise floors per block (:func:`noise_floors`).
    """
    floors = floors or {}
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    B, T, _, H, W = video.shape
    blocks = sorted(set(int(b) for b in blocks))
    if mode in PIXEL_WARPS and T > 1:
        warped, covered = warp_to_previous(video, transforms)
        frames = torch.cat([video.flatten(0, 1), warped.flatten(0, 1)])
        maps = frozen_block_maps(backbone, frames, blocks)
        valid = covered_patches(covered, patch_size(backbone)) if mode == "warp" else None
        out = {}
        for b, m in maps.items():
            N = m.shape[-1]
            own = m[:B * T].view(B, T, N, N)
            out[b] = am_flow_pairs(own[:, :-1], m[B * T:].view(B, T - 1, N, N), spec.temperature, spec.normalise,
                                   valid=valid, raw_following=own[:, 1:], aligned_floor=spec.aligned_floor,
                                   noise_floor=floors.get(b, 0.0))
        return out
    alignment = None
    if mode == "grid":
        alignment = patch_alignment(transforms, patch_grid(backbone, H, W), patch_size(backbone))
    maps = frozen_block_maps(backbone, video.flatten(0, 1), blocks)
    return {b: am_flow(m.view(B, T, *m.shape[-2:]), spec.temperature, spec.normalise, alignment,
                       spec.aligned_floor, floors.get(b, 0.0)) for b, m in maps.items()}
