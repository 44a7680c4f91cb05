"""AM flow: one motion score per patch and frame from the change of attention maps (docs/design.md 2.3, 2.4).

Static camera, for frames t and t+1 with patch maps ``A_t`` (``N x N``, rows = queries):

    D_t = |A_t - A_{t+1}|
    AMflow_t = softmax(D_t / (tau * mean|D_t|), dim=-1)^T 1      (column sums: change of attention *to* j)

The last frame reuses the score of the previous pair; each frame's scores are then normalised
(``mean``: mean 1, ``max``: max 1, ``none``) so they can gate tokens.

Aligned (moving camera): ``H_t`` maps pixel coordinates of frame t to frame t+1 (pixel centres at
integers, docs/architecture.md). Each patch centre of frame t is mapped into frame t+1 and expressed in
patch-grid units; bilinear weights over the four nearest patch centres form a sampling matrix ``W``
(row i = where patch i went), and ``A'_{t+1} = W A_{t+1} W^T`` is frame t+1's map seen on frame t's
grid. Patches whose centre leaves frame t+1 are *excluded*: their rows and columns of ``D`` are
zeroed and left out of the mean, the softmax runs over the kept columns only, and their score is the
neutral value 1 (the mean column sum of a row-stochastic matrix), so they neither attract nor lose
gating.

The temperature's reference scale is relative (``mean|D|``), which makes AM flow independent of the
attention's overall scale, but it would also blow up the small residual that compensation leaves on
a pure camera pan (absolute position embeddings, content entering at the border, sub-patch
resampling) into a peaked map. The aligned variant therefore uses ``max(mean|D_aligned|,
aligned_floor * mean|D_uncompensated|)``: after compensation, a change counts as large only relative
to how much the raw frames changed. For an identity ``H`` the matrix ``W`` is exactly the identity,
every patch is kept and the floor never binds, so the aligned result equals the static one bit for bit
(both go through :func:`flow_from_difference`).

Known limit (measured with random-init tiny ViTs, patch 4, tests/models/test_models_am_flow.py scenes):
resampling attention maps is exact only for whole-patch motion. For a pan of one patch per frame the
aligned flow is flat (CV 0.02-0.05 vs 0.11-0.17 static) and finds a moving square (0.33-0.45 of the
mass on 11% of the patches, static 0.10); for 2 or 3 px pans (half a patch or so) the interpolated
``A'`` is no closer to ``A_t`` than the raw one and aligned is no better than static (CV 0.13-0.22,
square mass 0.09-0.12). A pretrained backbone's smoother features may do better; not measured yet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

NORMALISE = ("mean", "max", "none")
# Guards divisions by a zero mean difference (identical frames): D is then 0 and the softmax uniform.
_TINY = 1e-12


@dataclass(frozen=True)
class PatchAlignment:
    """Camera-motion compensation between consecutive frames, on the patch grid.

    ``sampling``: ``[B, T-1, N, N]`` bilinear weights, row i of pair t = position of frame t's patch i in
    frame t+1. ``valid``: ``[B, T-1, N]`` bool, False where that position lies outside frame t+1.
    """

    sampling: torch.Tensor
    valid: torch.Tensor


def patch_alignment(transforms: torch.Tensor, grid: tuple[int, int],
                    patch: tuple[int, int]) -> PatchAlignment:
    """Sampling matrices for ``transforms`` ``[B, T-1, 3, 3]`` (pixel coords, frame t -> t+1)."""
    with torch.no_grad(), torch.autocast(transforms.device.type, enabled=False):
        return _patch_alignment(transforms, grid, patch)


def _patch_alignment(transforms: torch.Tensor, grid: tuple[int, int],
                     patch: tuple[int, int]) -> PatchAlignment:
    h, w = grid
    ph, pw = patch
    dev = transforms.device
    # Geometry in float64: positions landing exactly on a patch centre or the frame edge stay exact.
    H = transforms.to(torch.float64)
    rows, cols = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64),
                                torch.arange(w, device=dev, dtype=torch.float64), indexing="ij")
    cx = cols.reshape(-1) * pw + (pw - 1) / 2     # patch centres in pixel coordinates
    cy = rows.reshape(-1) * ph + (ph - 1) / 2
    pts = torch.stack([cx, cy, torch.ones_like(cx)], dim=-1)            # [N, 3]
    mapped = torch.einsum("bpij,nj->bpni", H, pts)                       # [B, P, N, 3]
    z = mapped[..., 2]
    u = (mapped[..., 0] / z - (pw - 1) / 2) / pw                         # patch-grid coordinates
    v = (mapped[..., 1] / z - (ph - 1) / 2) / ph
    tol = 1e-6
    valid = ((z > 0) & torch.isfinite(u) & torch.isfinite(v)
             & (u >= -0.5 - tol) & (u <= w - 0.5 + tol) & (v >= -0.5 - tol) & (v <= h - 0.5 + tol))
    # Half a patch beyond the outer centres is still inside the frame: clamp onto the border centres.
    u = torch.nan_to_num(u).clamp(0, w - 1)
    v = torch.nan_to_num(v).clamp(0, h - 1)
    u0, v0 = u.floor(), v.floor()
    fu, fv = u - u0, v - v0
    u1, v1 = (u0 + 1).clamp(max=w - 1), (v0 + 1).clamp(max=h - 1)
    keep = valid.to(torch.float64)
    idx = torch.stack([v0 * w + u0, v0 * w + u1, v1 * w + u0, v1 * w + u1], dim=-1).long()
    wts = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], dim=-1) * keep[..., None]
    B, P, N = u.shape
    sampling = torch.zeros(B, P, N, N, dtype=torch.float64, device=dev)
    sampling.scatter_add_(-1, idx, wts)
    return PatchAlignment(sampling=sampling.float(), valid=valid)


def _masked_mean(diff: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    return diff.sum(dim=(-2, -1)) / pair.sum(dim=(-2, -1)).clamp_min(1)


def flow_from_difference(diff: torch.Tensor, valid: Optional[torch.Tensor], temperature: float,
                         floor: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(D / (tau * scale))^T 1`` over kept patches: ``diff`` ``[..., N, N]`` -> ``[..., N]``.

    ``scale`` is the mean of ``D`` over kept pairs, raised to ``floor`` (``[...]``) where given.
    """
    if valid is None:
        valid = torch.ones(diff.shape[:-1], dtype=torch.bool, device=diff.device)
    keep = valid.to(diff.dtype)
    pair = keep[..., :, None] * keep[..., None, :]
    diff = diff * pair
    scale = _masked_mean(diff, pair)
    if floor is not None:
        scale = torch.maximum(scale, floor)
    logits = diff / (temperature * scale.clamp_min(_TINY))[..., None, None]
    logits = logits.masked_fill(~valid[..., None, :], torch.finfo(logits.dtype).min)
    probs = logits.softmax(dim=-1) * keep[..., :, None]
    return torch.where(valid, probs.sum(dim=-2), torch.ones_like(keep))


def normalise_scores(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-frame normalisation of ``[..., N]`` scores so they can gate tokens."""
    if mode == "mean":
        return scores / scores.mean(dim=-1, keepdim=True).clamp_min(_TINY)
    if mode == "max":
        return scores / scores.amax(dim=-1, keepdim=True).clamp_min(_TINY)
    if mode == "none":
        return scores
    raise ValueError(f"normalise must be one of {NORMALISE}, got {mode!r}")


def with_noise_floor(floor: Optional[torch.Tensor], noise_floor: float, like: torch.Tensor) -> Optional[torch.Tensor]:
    """The temperature's floor ``[...]`` raised to the absolute ``noise_floor`` (0: unchanged)."""
    if noise_floor <= 0:
        return floor
    absolute = torch.full(like.shape[:-2], float(noise_floor), dtype=like.dtype, device=like.device)
    return absolute if floor is None else torch.maximum(floor, absolute)


def am_flow(maps: torch.Tensor, temperature: float, normalise: str = "mean",
            alignment: Optional[PatchAlignment] = None, aligned_floor: float = 0.0,
            noise_floor: float = 0.0) -> torch.Tensor:
    """AM flow of patch maps ``[B, T, N, N]`` -> scores ``[B, T, N]`` (static, or aligned if given).

    ``noise_floor``: an absolute floor of the temperature's reference scale (the block's noise level
    times ``model.am_flow.noise_floor``), so that maps that differ by noise only give near-uniform scores.
    Always float32, also under bf16 autocast: the differences are of entries of order 1/N.
    """
    with torch.autocast(maps.device.type, enabled=False):
        return _am_flow(maps.float(), temperature, normalise, alignment, aligned_floor, noise_floor)


def _am_flow(maps: torch.Tensor, temperature: float, normalise: str,
             alignment: Optional[PatchAlignment], aligned_floor: float, noise_floor: float) -> torch.Tensor:
    B, T, N, _ = maps.shape
    if T < 2:
        return normalise_scores(torch.ones(B, T, N, device=maps.device), normalise)
    current, following = maps[:, :-1], maps[:, 1:]
    valid = floor = None
    if alignment is not None:
        raw = (current - following).abs()
        # Same ops as the static mean, so identity transforms (aligned diff == raw diff) stay exact.
        floor = aligned_floor * _masked_mean(raw, torch.ones_like(raw))
        W = alignment.sampling.to(maps.device)
        following = W @ following @ W.transpose(-2, -1)
        valid = alignment.valid.to(maps.device)
    floor = with_noise_floor(floor, noise_floor, current)
    flow = flow_from_difference((current - following).abs(), valid, temperature, floor)   # [B, T-1, N]
    flow = torch.cat([flow, flow[:, -1:]], dim=1)    # the last frame has no successor: reuse
    return normalise_scores(flow, normalise)


def coefficient_of_variation(scores: torch.Tensor) -> torch.Tensor:
    """std / mean over the last axis: 0 for a uniform score; used in tests, bench and plots."""
    return scores.std(dim=-1, unbiased=False) / scores.mean(dim=-1).clamp_min(_TINY)


# --------------------------------------------------------------------------- pixel-space compensation
FILLS = ("previous", "border", "reflection", "zeros")


def warp_to_previous(frames: torch.Tensor, transforms: torch.Tensor,
                     fill: str = "previous") -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t+1 seen in frame t's pixels: ``frames`` ``[B, T, C, H, W]``, ``transforms`` ``[B, T-1, 3, 3]``.

    Pixel x of frame t samples frame t+1 at ``H_t x`` (bilinear, pixel centres at integers). Returns the
    warped frames ``[B, T-1, C, H, W]`` and ``covered`` ``[B, T-1, H, W]`` (bool): where ``H_t x`` lies
    inside frame t+1. Uncovered pixels take frame t's own value (``fill: previous``), so the strip that
    left the view shows no change and adds nothing new to the attention of the covered part. The other
    fills pad frame t+1 instead (``grid_sample``'s padding modes), which the compensation measurements
    compare (docs/method.md).
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    with torch.no_grad(), torch.autocast(frames.device.type, enabled=False):
        B, T, C, H, W = frames.shape
        dev = frames.device
        ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float64),
                                torch.arange(W, device=dev, dtype=torch.float64), indexing="ij")
        pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)         # [HW, 3]
        mapped = torch.einsum("bpij,nj->bpni", transforms.to(dev, torch.float64), pts)  # [B, T-1, HW, 3]
        z = mapped[..., 2]
        u, v = mapped[..., 0] / z, mapped[..., 1] / z
        tol = 1e-6
        covered = ((z > 0) & (u >= -tol) & (u <= W - 1 + tol) & (v >= -tol) & (v <= H - 1 + tol))
        # grid_sample with align_corners=True: -1 and 1 are the centres of the outer pixels.
        grid = torch.stack([2 * u / max(W - 1, 1) - 1, 2 * v / max(H - 1, 1) - 1], dim=-1)
        grid = torch.nan_to_num(grid, nan=-2.0).clamp(-2, 2).view(B * (T - 1), H, W, 2)
        following = frames[:, 1:].float().reshape(B * (T - 1), C, H, W)
        warped = F.grid_sample(following, grid.float(), mode="bilinear",
                               padding_mode="border" if fill == "previous" else fill,
                               align_corners=True).view(B, T - 1, C, H, W)
        covered = covered.view(B, T - 1, H, W)
        if fill == "previous":
            warped = torch.where(covered[:, :, None], warped, frames[:, :-1].float())
        return warped.to(frames.dtype), covered


def covered_patches(covered: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``[..., H, W]`` bool pixels -> ``[..., N]`` bool patches whose every pixel is covered."""
    lead = covered.shape[:-2]
    H, W = covered.shape[-2:]
    x = covered.reshape(-1, 1, H, W).float()
    full = -F.max_pool2d(-x, kernel_size=patch, stride=patch)     # min pool: 1 only if all pixels are
    return (full > 0.5).reshape(*lead, -1)


def am_flow_pairs(current: torch.Tensor, following: torch.Tensor, temperature: float, normalise: str,
                  valid: Optional[torch.Tensor] = None, raw_following: Optional[torch.Tensor] = None,
                  aligned_floor: float = 0.0, noise_floor: float = 0.0) -> torch.Tensor:
    """AM flow from explicit pairs: maps of frames ``current`` ``[B, T-1, N, N]`` against a compensated
    ``following`` of the same shape (pixel-warped frames), ``valid`` ``[B, T-1, N]`` patches to keep.

    ``raw_following`` (the uncompensated maps of frames t+1) sets the temperature's floor as in the
    grid-aligned variant. Returns ``[B, T, N]`` scores, the last frame reusing the previous pair's.
    """
    with torch.autocast(current.device.type, enabled=False):
        current, following = current.float(), following.float()
        floor = None
        if raw_following is not None:
            raw = (current - raw_following.float()).abs()
            floor = aligned_floor * _masked_mean(raw, torch.ones_like(raw))
        floor = with_noise_floor(floor, noise_floor, current)
        flow = flow_from_difference((current - following).abs(), valid, temperature, floor)
        flow = torch.cat([flow, flow[:, -1:]], dim=1)
        return normalise_scores(flow, normalise)


# --------------------------------------------------------------------------- controls
def shuffle_scores(scores: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each row of ``[M, N]`` permuted at random: the same values, no location."""
    keys = torch.rand(scores.shape, generator=generator, device="cpu").to(scores.device)
    return scores.gather(-1, keys.argsort(dim=-1))


def coverage_share(coverage: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """The share of each patch the actor covers ``[M, N]``, from its pixel coverage ``[M, H, W]`` in [0, 1]."""
    return F.avg_pool2d(coverage.float()[:, None], kernel_size=patch, stride=patch).flatten(1)


def share_scores(share: torch.Tensor, normalise: str) -> torch.Tensor:
    """Scores from coverage shares ``[..., N]``, normalised like AM flow; a map without the actor gets the
    neutral score 1 everywhere (what AM flow gives when nothing changes)."""
    empty = share.sum(dim=-1, keepdim=True) <= 0
    return normalise_scores(torch.where(empty, torch.ones_like(share), share), normalise)


def coverage_scores(coverage: torch.Tensor, patch: tuple[int, int], normalise: str) -> torch.Tensor:
    """Oracle scores ``[M, N]`` from the actor's pixel coverage ``[M, H, W]``: its share of each patch in
    each frame (it carries the actor's trajectory, frame by frame)."""
    return share_scores(coverage_share(coverage, patch), normalise)


def footprint_scores(share: torch.Tensor, normalise: str) -> torch.Tensor:
    """Footprint oracle ``[B, T, N]`` from per-frame shares ``[B, T, N]``: the actor's mean share of each
    patch over the clip, the same map in every frame (where the actor is, not how it moves)."""
    mean = share.mean(dim=1, keepdim=True)
    return share_scores(mean, normalise).expand_as(share)


def rank_matched_scores(scores: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Each row of ``scores`` ``[M, N]`` reassigned to its patches in the order of the actor's coverage
    ``share`` ``[M, N]``: the largest value goes to the most covered patch, and so on; patches the actor
    covers equally keep AM flow's own order among them. Same values as AM flow, perfect ranking (the
    mirror image of :func:`shuffle_scores`)."""
    by_score = scores.argsort(dim=-1, descending=True, stable=True)
    by_share = share.gather(-1, by_score).argsort(dim=-1, descending=True, stable=True)
    order = by_score.gather(-1, by_share)            # patches by (share, then score), largest first
    values = scores.sort(dim=-1, descending=True).values
    return torch.empty_like(scores).scatter_(-1, order, values)
