"""``build_model``: the one place where a method name becomes a :class:`VideoModel` (docs/design.md 2.7)."""
from __future__ import annotations

from torch import nn

from amflow.errors import AmflowError
from amflow.models.adapters import TPABlock
from amflow.models.backbone import check_backbone
from amflow.models.baselines import AIMBlock, STAdapterBlock
from amflow.models.video_model import VideoModel
from amflow.params import METHODS, MODEL_VARIANTS, AdapterSpec, ModelSpec


def adapted_blocks(spec: AdapterSpec, depth: int) -> list[int]:
    """Indices of the blocks that get an adapter (``model.adapter.blocks``: 'all' or a list)."""
    if spec.blocks == "all":
        return list(range(depth))
    out = []
    for i in spec.blocks:
        if not -depth <= i < depth:
            raise AmflowError(f"model.adapter.blocks: index {i} is outside the backbone's {depth} blocks")
        out.append(i % depth)
    if len(set(out)) != len(out):
        raise AmflowError(f"model.adapter.blocks lists a block twice: {spec.blocks}")
    return sorted(out)


def build_model(method: str, backbone: nn.Module, num_classes: int, num_frames: int,
                model_spec: ModelSpec, am_flow_variant: str) -> VideoModel:
    """A video model of ``method`` over the frozen ``backbone``.

    ``am_flow_variant`` (``static | aligned | none``; resolve ``auto`` first) matters only for
    ``amflow``; ``amflow`` with ``none`` is the TPA without gating, i.e. the same model as ``tpa``.
    """
    if method not in METHODS:
        raise AmflowError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if am_flow_variant not in MODEL_VARIANTS:
        raise AmflowError(f"am_flow_variant must be one of {', '.join(MODEL_VARIANTS)} (got '{am_flow_variant}'); "
                          f"'auto' and 'auto_per_video' are resolved from the camera-motion decision first")
    if num_frames < 1 or num_classes < 1:
        raise AmflowError(f"num_frames and num_classes must be positive (got {num_frames}, {num_classes})")
    check_backbone(backbone)
    depth, dim = len(backbone.blocks), backbone.embed_dim
    adapter = model_spec.adapter
    use_flow = method == "amflow" and am_flow_variant != "none"
    flow = model_spec.am_flow if use_flow else None
    if flow is not None and flow.source != "same" and not 0 <= int(flow.source) < depth:
        raise AmflowError(f"model.am_flow.source: block {flow.source} does not exist "
                          f"(the backbone has {depth} blocks; use 'same' or 0..{depth - 1})")

    blocks: dict[int, nn.Module] = {}
    if method != "frame":
        indices = adapted_blocks(adapter, depth)
        for i in indices:
            if method == "aim":
                blocks[i] = AIMBlock(dim, adapter)
            elif method == "st_adapter":
                blocks[i] = STAdapterBlock(dim, adapter)
            else:  # tpa, amflow; the 'pool' integration reads the deepest adapted block's scores
                blocks[i] = TPABlock(dim, adapter, num_frames, use_am_flow=use_flow,
                                     integration=model_spec.am_flow.integration, scores_for_head=i == indices[-1])
    return VideoModel(method, backbone, num_classes, num_frames, blocks, am_flow=flow,
                      aligned=use_flow and am_flow_variant == "aligned",
                      temporal_embedding=method == "aim")
