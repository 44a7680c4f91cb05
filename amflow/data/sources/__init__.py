"""The dataset sources, by their ``source:`` value in a params file (the contract: :mod:`.base`).

A source is one module: its schema (in :mod:`amflow.params`, registered with ``register_source``) and
its :class:`~.base.Source` (how its datasets are built), registered here."""
from __future__ import annotations

from amflow.data.sources import kinetics, smarthome, ssv2, synthmotion, video_list
from amflow.data.sources.base import Source
from amflow.registry import Registry

SOURCES: Registry[Source] = Registry("dataset source")
for _source in (synthmotion.SOURCE, kinetics.SOURCE, ssv2.SOURCE, smarthome.SOURCE, video_list.SOURCE):
    SOURCES.register(_source.name, _source)


def get(name: str) -> Source:
    return SOURCES.get(name)
