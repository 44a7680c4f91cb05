"""The dataset sources, by their ``source:`` value in a params file (the contract: :mod:`.base`)."""
from __future__ import annotations

from amflow.data.sources import kinetics, smarthome, ssv2, synthmotion, video_list
from amflow.data.sources.base import Source
from amflow.errors import AmflowError

SOURCES: dict[str, Source] = {s.name: s for s in (synthmotion.SOURCE, kinetics.SOURCE, ssv2.SOURCE,
                                                   smarthome.SOURCE, video_list.SOURCE)}


def get(name: str) -> Source:
    if name not in SOURCES:
        raise AmflowError(f"unknown dataset source '{name}' (known: {', '.join(SOURCES)})")
    return SOURCES[name]
