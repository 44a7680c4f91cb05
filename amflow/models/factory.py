"""``build_model``: the one place where a method name becomes a :class:`VideoModel` (docs/design.md 2.7),
from the method's registered model (:mod:`amflow.models.methods`)."""
from __future__ import annotations

from typing import Any

from torch import nn

from amflow import methods
from amflow.errors import AmflowError
from amflow.models import adapters, baselines  # noqa: F401 (they register their methods' models)
from amflow.models.backbone import check_backbone
from amflow.models.config import AdapterConfig, ModelConfig, plain
from amflow.models.methods import METHOD_MODELS
from amflow.models.video_model import VideoModel
from amflow.params import MODEL_VARIANTS


def adapted_blocks(spec: AdapterConfig, depth: int) -> list[int]:
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
                model_spec: Any, am_flow_variant: str) -> VideoModel:
    """A video model of ``method`` over the frozen ``backbone``.

    ``model_spec``: a :class:`ModelConfig` or an object with its fields (the params' ``model``).
    ``am_flow_variant`` (``static | aligned | none``; resolve ``auto`` first) matters only for a method
    that reads AM flow (:mod:`amflow.methods`); ``amflow`` with ``none`` is the TPA without gating, i.e.
    the same model as ``tpa``.
    """
    declared = methods.get(method)
    built = METHOD_MODELS.get(method)
    if am_flow_variant not in MODEL_VARIANTS:
        raise AmflowError(f"am_flow_variant must be one of {', '.join(MODEL_VARIANTS)} (got '{am_flow_variant}'); "
                          f"'auto' and 'auto_per_video' are resolved from the camera-motion decision first")
    if num_frames < 1 or num_classes < 1:
        raise AmflowError(f"num_frames and num_classes must be positive (got {num_frames}, {num_classes})")
    check_backbone(backbone)
    config = plain(ModelConfig, model_spec)
    depth, dim = len(backbone.blocks), backbone.embed_dim
    use_flow = declared.am_flow and am_flow_variant != "none"
    flow = config.am_flow if use_flow else None
    if flow is not None and flow.source != "same" and not 0 <= int(flow.source) < depth:
        raise AmflowError(f"model.am_flow.source: block {flow.source} does not exist "
                          f"(the backbone has {depth} blocks; use 'same' or 0..{depth - 1})")

    blocks: dict[int, nn.Module] = {}
    if built.block is not None:
        indices = adapted_blocks(config.adapter, depth)
        blocks = {i: built.block(dim, config.adapter, num_frames, flow, i == indices[-1]) for i in indices}
    return VideoModel(method, backbone, num_classes, num_frames, blocks, am_flow=flow,
                      aligned=use_flow and am_flow_variant == "aligned",
                      temporal_embedding=built.temporal_embedding)
