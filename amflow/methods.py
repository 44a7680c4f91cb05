"""The methods of the comparison (docs/design.md 2.7), registered by name with what each reads.

A method is declared here (what its runs need from the other stages) and its model is registered under
the same name in :mod:`amflow.models.factory` (the blocks it adapts). The schema's check of ``methods:``,
the CLI's ``--method`` choices, the workflow's inputs and wildcards, the params MLflow logs and the
report ask this registry instead of naming methods.
"""
from __future__ import annotations

from dataclasses import dataclass

from amflow.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    # Reads AM flow's scores: `model.am_flow` applies, and its variant is resolved from the camera-motion
    # decision before the model is built ('none' otherwise).
    am_flow: bool = False
    # Reads the camera-motion stage's decision and the clips' camera transforms (`R/D/motion.npz`).
    camera_motion: bool = False
    # Its `model.am_flow.control` may read SynthMotion's ground truth (oracle, footprint, rank_matched).
    ground_truth_controls: bool = False
    # Trains adapters inside the backbone's blocks ('frame' trains the head alone).
    adapters: bool = True
    # The method it equals with AM flow off (the report's first comparison).
    reference: str | None = None


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    return METHODS.register(method.name, method)


def get(name: str) -> Method:
    return METHODS.get(name)


def names() -> tuple[str, ...]:
    return METHODS.names()


def comparison_order(name: str, present: set[str]) -> list[str]:
    """The methods ``name`` is compared with, closest first: its reference, the other adapter methods,
    then those without adapters (registration order within each), those in ``present`` only."""
    ref = get(name).reference
    others = [m for m in names() if m not in (name, ref)]
    order = ([ref] if ref else []) + [m for m in others if get(m).adapters] + [m for m in others if not get(m).adapters]
    return [m for m in order if m in present]


# The order is the params' default `methods:` order (and that of table 1).
register(Method("frame", adapters=False))
register(Method("aim"))
register(Method("st_adapter"))
register(Method("tpa"))
register(Method("amflow", am_flow=True, camera_motion=True, ground_truth_controls=True, reference="tpa"))
