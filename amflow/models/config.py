"""The settings a model is built from, as plain values: the models know no params file.

The fields are those of the params' ``backbone``, ``model.adapter`` and ``model.am_flow`` sections
(which hold their defaults and checks); :func:`plain` copies any object that has them, such as those
sections, into these records. See docs/design.md 2.6 for what each one does.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, TypeVar, Union

C = TypeVar("C")


@dataclass(frozen=True)
class BackboneConfig:
    model: str                      # timm model name
    kwargs: dict[str, Any]          # extra timm.create_model arguments
    weights: str                    # pretrain | hub | file | random
    weights_file: Optional[str]


@dataclass(frozen=True)
class AdapterConfig:
    bottleneck: int
    position: str                   # parallel_mlp | after_attn
    blocks: Union[str, list[int]]   # 'all' or block indices
    tpu: str                        # transformer | tcn | lstm | none
    tcn_kernel: int
    tcn_dilations: list[int]
    drop_path: float
    scale: float
    tpu_heads: int
    st_kernel: tuple[int, int, int]


@dataclass(frozen=True)
class AmFlowConfig:
    variant: str
    temperature: float
    source: Union[str, int]         # 'same' or a block index
    normalise: str
    aligned_floor: float
    noise_floor: float
    still_noise: float
    alignment: str
    integration: str                # a name of amflow.models.integrations.INTEGRATIONS
    control: str


@dataclass(frozen=True)
class ModelConfig:
    adapter: AdapterConfig
    am_flow: AmFlowConfig


def plain(cls: type[C], settings: Any) -> C:
    """``settings`` (any object with ``cls``'s fields as attributes) as a ``cls`` record."""
    if isinstance(settings, cls):
        return settings
    values = {f.name: getattr(settings, f.name) for f in fields(cls)}
    if cls is ModelConfig:
        values = {"adapter": plain(AdapterConfig, values["adapter"]), "am_flow": plain(AmFlowConfig, values["am_flow"])}
    return cls(**values)
