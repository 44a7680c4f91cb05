"""The model of each method (docs/design.md 2.7), registered under the method's name (what the method
reads is declared in :mod:`amflow.methods`): the module each adapted block gets, built from plain values.
``frame`` adapts no block; the others register beside their blocks (:mod:`.adapters`, :mod:`.baselines`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from amflow.models.config import AdapterConfig, AmFlowConfig
from amflow.registry import Registry

# (dim, adapter settings, num_frames, AM flow settings or None when off, whether it is the deepest
# adapted block) -> the module that runs the block (its ``forward(blk, x, ctx, index)``).
BlockBuilder = Callable[[int, AdapterConfig, int, Optional[AmFlowConfig], bool], nn.Module]


@dataclass(frozen=True)
class MethodModel:
    block: Optional[BlockBuilder]       # None: no block is adapted (the head alone trains)
    temporal_embedding: bool = False    # a zero-initialised embedding per frame, added after the positional one


METHOD_MODELS: Registry[MethodModel] = Registry("method model")


def register_method_model(name: str, model: MethodModel) -> MethodModel:
    return METHOD_MODELS.register(name, model)


register_method_model("frame", MethodModel(block=None))
