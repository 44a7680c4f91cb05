"""Backbone wrapper, AM flow, temporal processing adapters and the baselines (docs/design.md 2).

- :mod:`.backbone`: ``build_backbone`` (frozen timm ViT + weights) and how frames enter it;
- :mod:`.attention`: explicit attention for the blocks whose maps AM flow needs;
- :mod:`.am_flow`: static and aligned AM flow;
- :mod:`.config`: the plain settings a model is built from (no params schema);
- :mod:`.tpu`, :mod:`.adapters`: temporal processing units and the TPA block;
- :mod:`.integrations`: how AM flow's scores enter, one module each, registered by name;
- :mod:`.baselines`: AIM and ST-Adapter blocks;
- :mod:`.methods`, :mod:`.video_model`, :mod:`.factory`: each method's registered blocks, ``VideoModel``
  and ``build_model``;
- :mod:`.flops`: ``clip_gflops``.
"""
from amflow.models.am_flow import am_flow, patch_alignment
from amflow.models.backbone import build_backbone
from amflow.models.factory import build_model
from amflow.models.flops import clip_gflops
from amflow.models.video_model import VideoModel

__all__ = ["am_flow", "patch_alignment", "build_backbone", "build_model", "clip_gflops", "VideoModel"]
