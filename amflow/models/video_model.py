"""The video model: a frozen image ViT run per frame, optional adapters in its blocks, a linear head.

Every method of the comparison (docs/design.md 2.7) is this one class with different per-block adapters
(built by :func:`amflow.models.factory.build_model`): the frames of a clip go through the backbone as
one batch of ``B*T`` images; a block with an adapter runs through that adapter's ``forward(blk, x,
ctx, index)`` (which calls the frozen block's own parts), any other block runs timm's forward. The head
is the CLS token of the last block, after the backbone's final norm, averaged over time, then Linear.
An AM flow integration that acts in the head (``pool``, :mod:`amflow.models.integrations.pool`) adds
its weights ``score_pool`` (zero at start) times its features of the final-norm tokens, averaged over
time, to the logits.

The backbone is *not* copied or modified: adapters are held apart from it (``block_adapters``), so a
state_dict has each backbone weight once, and several models can share one backbone.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from amflow.errors import AmflowError
from amflow.models.am_flow import (PatchAlignment, coverage_share, footprint_scores, patch_alignment,
                                   share_scores)
from amflow.models.backbone import embed_frames, freeze, num_prefix_tokens, patch_grid, patch_size
from amflow.models.config import AmFlowConfig
from amflow.models.context import ClipContext
from amflow.models.frozen_flow import PIXEL_WARPS, frozen_scores, noise_floors
from amflow.models.integrations import INTEGRATIONS
from amflow.params import GROUND_TRUTH_CONTROLS

# Controls whose scores replace AM flow's (no attention map is needed); the others transform AM flow's.
REPLACING_CONTROLS = ("oracle", "footprint", "uniform")


class VideoModel(nn.Module):
    def __init__(self, method: str, backbone: nn.Module, num_classes: int, num_frames: int,
                 block_adapters: dict[int, nn.Module], am_flow: Optional[AmFlowConfig] = None,
                 aligned: bool = False, temporal_embedding: bool = False):
        super().__init__()
        self.method = method
        self.num_frames = num_frames
        self.backbone = freeze(backbone)
        self.block_adapters = nn.ModuleDict({str(i): m for i, m in block_adapters.items()})
        self.am_flow_spec = am_flow
        self.aligned = aligned
        dim = backbone.embed_dim
        # AIM's temporal embedding: added to every token after the positional embedding, zero at start.
        self.temporal_embedding = (nn.Parameter(torch.zeros(num_frames, dim)) if temporal_embedding else None)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # The weights of an integration in the head ('pool'): zeros, created without a random draw, so an
        # untrained model equals tpa built from the same seed.
        self.integration = INTEGRATIONS.get(am_flow.integration) if am_flow is not None else None
        self.score_pool = self.integration.head_weights(num_classes, dim) if self.integration is not None else None
        # Each block's noise level (model.am_flow.noise_floor): measured on still clips before training
        # (set_noise_levels) and kept in the checkpoint with the other buffers.
        if am_flow is not None and am_flow.noise_floor > 0:
            self.register_buffer("flow_noise", torch.full((len(backbone.blocks),), float("nan")))
        else:
            self.flow_noise = None

    # ------------------------------------------------------------------ mode and bookkeeping
    def train(self, mode: bool = True) -> "VideoModel":
        """Adapters and head follow ``mode``; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def param_counts(self) -> dict[str, int]:
        params = list(self.parameters())
        return {"trainable": sum(p.numel() for p in params if p.requires_grad),
                "total": sum(p.numel() for p in params)}

    def set_noise_levels(self, levels: torch.Tensor) -> None:
        """The backbone's noise level per block (:func:`amflow.models.frozen_flow.noise_levels`)."""
        self.flow_noise.copy_(levels)

    def _floors(self) -> dict[int, float]:
        if self.flow_noise is None:
            return {}
        if torch.isnan(self.flow_noise).any():
            raise AmflowError("model.am_flow.noise_floor is set but the model has no noise levels: they are "
                              "measured on still clips when training starts (VideoModel.set_noise_levels) and "
                              "stored in the checkpoint; load the run's checkpoint or train it again")
        return noise_floors(self.am_flow_spec, self.flow_noise)

    def integration_norms(self) -> dict[str, float]:
        """The L2 norm of every zero-initialised integration weight (``score_*``), by parameter name: a
        weight that never left zero shows as 0."""
        return {name: float(p.detach().norm()) for name, p in self.named_parameters()
                if name.rsplit(".", 1)[-1].startswith("score_")}

    @property
    def reads_coverage(self) -> bool:
        """Whether a control reads the actor's ground-truth coverage (``coverage`` in :meth:`forward`)."""
        return self.am_flow_spec is not None and self.am_flow_spec.control in GROUND_TRUTH_CONTROLS

    @property
    def replaces_scores(self) -> bool:
        return self.am_flow_spec is not None and self.am_flow_spec.control in REPLACING_CONTROLS

    @property
    def needs_transforms(self) -> bool:
        return self.am_flow_spec is not None and self.aligned and not self.replaces_scores

    @property
    def pixel_warp(self) -> bool:
        return self.needs_transforms and self.am_flow_spec.alignment in PIXEL_WARPS

    # ------------------------------------------------------------------ forward
    def forward(self, video: torch.Tensor, transforms: Optional[torch.Tensor] = None,
                coverage: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``video`` ``[B, T, 3, H, W]``, ``transforms`` ``[B, T-1, 3, 3]`` (aligned AM flow), ``coverage``
        ``[B, T, H, W]`` (the actor's pixel coverage, for the controls that read it) -> logits."""
        cls, pooled = self._encode(video, transforms, None, coverage)
        logits = self.head(cls)
        if pooled is not None:
            logits = logits + pooled @ self.score_pool.t()
        return logits

    def features(self, video: torch.Tensor, transforms: Optional[torch.Tensor] = None,
                 record: Optional[dict[int, torch.Tensor]] = None,
                 coverage: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-head features ``[B, D]``: final-norm CLS averaged over time.

        ``record``, if given, receives the AM flow scores ``[B*T, N]`` of every block that computes them.
        """
        return self._encode(video, transforms, record, coverage)[0]

    def _encode(self, video: torch.Tensor, transforms: Optional[torch.Tensor],
                record: Optional[dict[int, torch.Tensor]],
                coverage: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(final-norm CLS ``[B, D]``, the head integration's features ``[B, D]`` or None), both averaged
        over time."""
        B, T = self._check_video(video)
        ctx = self._context(video, transforms, record)
        if self.replaces_scores:
            ctx.replacement = self._replacement_scores(video, coverage)
        elif self.reads_coverage:
            ctx.coverage = self._coverage_share(coverage, video)
        if ctx.replacement is None and self.pixel_warp:
            ctx.block_scores = self._warp_scores(video, transforms)
            if record is not None:
                record.update(ctx.block_scores)
        x = embed_frames(self.backbone, video.flatten(0, 1))
        if self.temporal_embedding is not None:
            x = (x.view(B, T, *x.shape[1:]) + self.temporal_embedding[None, :, None, :]).flatten(0, 1)
        if (ctx.flow is not None and not ctx.same_block_source and ctx.block_scores is None
                and ctx.replacement is None):
            ctx.fixed_scores = self._fixed_source_scores(video, transforms, ctx)
        for i, blk in enumerate(self.backbone.blocks):
            adapter = self.block_adapters[str(i)] if str(i) in self.block_adapters else None
            x = blk(x) if adapter is None else adapter(blk, x, ctx, i)
        x = self.backbone.norm(x)
        cls = x[:, 0].view(B, T, -1).mean(dim=1)
        if self.score_pool is None:
            return cls, None
        pooled = self.integration.head_features(x, ctx.head_scores, ctx.num_prefix)
        return cls, pooled.view(B, T, -1).mean(dim=1)

    def _check_video(self, video: torch.Tensor) -> tuple[int, int]:
        if video.dim() != 5 or video.shape[2] != 3:
            raise AmflowError(f"video must be [B, T, 3, H, W], got shape {tuple(video.shape)}")
        B, T = video.shape[:2]
        if T != self.num_frames:
            raise AmflowError(f"the model was built for {self.num_frames} frames (sampling.num_frames) "
                              f"but got clips of {T}; rebuild it or change the sampling")
        return B, T

    def _context(self, video: torch.Tensor, transforms: Optional[torch.Tensor],
                 record: Optional[dict]) -> ClipContext:
        B, T, _, H, W = video.shape
        grid = patch_grid(self.backbone, H, W)
        ctx = ClipContext(batch=B, frames=T, num_prefix=num_prefix_tokens(self.backbone), grid=grid,
                          flow=self.am_flow_spec, record=record, floors=self._floors())
        if self.needs_transforms:
            ctx.alignment = self._alignment(transforms, B, T, grid)
        return ctx

    def _alignment(self, transforms: Optional[torch.Tensor], B: int, T: int,
                   grid: tuple[int, int]) -> PatchAlignment:
        if transforms is None:
            raise AmflowError(
                "aligned AM flow needs the clip's camera transforms [B, T-1, 3, 3]: run `amflow "
                "camera-motion` for the dataset (it writes results/<name>/<dataset>/motion.npz) and pass the clips' "
                "'transforms', or use am_flow.variant: static")
        if tuple(transforms.shape) != (B, T - 1, 3, 3):
            raise AmflowError(f"transforms must be [B, T-1, 3, 3] = {[B, T - 1, 3, 3]}, "
                              f"got {list(transforms.shape)}")
        return patch_alignment(transforms, grid, patch_size(self.backbone))

    def _fixed_source_scores(self, video: torch.Tensor, transforms: Optional[torch.Tensor],
                             ctx: ClipContext) -> torch.Tensor:
        """AM flow ``[B*T, N]`` of one fixed block of the *frozen* backbone (``am_flow.source: <index>``).

        Adapters in earlier blocks need the score before the adapted stream reaches that block, so the
        frozen blocks up to it run once more without adapters.
        """
        source = int(ctx.flow.source)
        mode = "grid" if self.needs_transforms else "static"
        scores = frozen_scores(self.backbone, video, transforms, ctx.flow, mode, [source], ctx.floors)[source]
        scores = scores.reshape(-1, scores.shape[-1])
        if ctx.record is not None:
            ctx.record[source] = scores
        return scores

    def _warp_scores(self, video: torch.Tensor, transforms: torch.Tensor) -> dict[int, torch.Tensor]:
        """Pixel-warp scores ``[B*T, N]`` of every block that uses them, from the frozen backbone."""
        spec = self.am_flow_spec
        blocks = [int(k) for k in self.block_adapters] if spec.source == "same" else [int(spec.source)]
        scores = frozen_scores(self.backbone, video, transforms, spec, spec.alignment, blocks, self._floors())
        return {b: s.reshape(-1, s.shape[-1]) for b, s in scores.items()}

    def _coverage_share(self, coverage: Optional[torch.Tensor], video: torch.Tensor) -> torch.Tensor:
        """The actor's share of each patch ``[B*T, N]``, from its pixel coverage ``[B, T, H, W]``."""
        control = self.am_flow_spec.control
        if coverage is None:
            raise AmflowError(f"model.am_flow.control: {control} needs the actor's ground-truth coverage "
                              "(SynthMotion only): run `amflow ground-truth` for the dataset, or use control: "
                              "none, shuffled or uniform")
        B, T, _, H, W = video.shape
        if tuple(coverage.shape) != (B, T, H, W):
            raise AmflowError(f"coverage must be [B, T, H, W] = {[B, T, H, W]}, got {list(coverage.shape)}")
        return coverage_share(coverage.flatten(0, 1), patch_size(self.backbone))

    def _replacement_scores(self, video: torch.Tensor, coverage: Optional[torch.Tensor]) -> torch.Tensor:
        """The scores a replacing control gives every block ``[B*T, N]``."""
        B, T, _, H, W = video.shape
        control, normalise = self.am_flow_spec.control, self.am_flow_spec.normalise
        if control == "uniform":  # mean 1 (and max 1): no location
            h, w = patch_grid(self.backbone, H, W)
            return torch.ones(B * T, h * w, device=video.device)
        share = self._coverage_share(coverage, video)
        if control == "oracle":
            return share_scores(share, normalise)
        return footprint_scores(share.view(B, T, -1), normalise).reshape(B * T, -1)

    # ------------------------------------------------------------------ inspection
    def am_flow_maps(self, video: torch.Tensor, transforms: Optional[torch.Tensor] = None,
                     block: Optional[int] = None) -> torch.Tensor:
        """AM flow scores ``[B, T, h, w]`` of the source block (for plots).

        ``block`` defaults to the fixed source layer, or with ``source: same`` to the last adapted block.
        """
        if self.am_flow_spec is None:
            raise AmflowError(f"model '{self.method}' uses no AM flow; build it with method 'amflow' "
                              f"and am_flow_variant static or aligned")
        record: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            self.features(video, transforms, record=record)
        if block is None:
            source = self.am_flow_spec.source
            block = int(source) if source != "same" else max(int(k) for k in self.block_adapters)
        if block not in record:
            raise AmflowError(f"block {block} computes no AM flow in this model (blocks that do: "
                              f"{sorted(record)})")
        B, T, _, H, W = video.shape
        h, w = patch_grid(self.backbone, H, W)
        return record[block].view(B, T, h, w)
