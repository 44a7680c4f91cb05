"""Which runs a params file asks for: the table runs and the ablation runs.

The Snakemake rules, the table builder and the report all take their run lists from here, so they
always agree on what exists.
"""
from __future__ import annotations

import functools
import itertools
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from amflow.params import Params
from amflow.params_io import deep_merge, set_dotted, validate

# The method AM flow is measured against: the same temporal adapter without AM flow.
REFERENCE = "tpa"
AXES = ("variant", "tpu", "tpu_tpa", "source", "blocks", "frames", "alignment", "integration", "control", "grid")


@dataclass(frozen=True)
class AblationRun:
    axis: str
    value: str
    dataset: str
    seed: int
    overrides: dict[str, Any] = field(hash=False, compare=False)
    method: str = "amflow"  # every axis ablates amflow but tpu_tpa, the TPUs of the adapter without AM flow

    def set_args(self) -> str:
        """The ``--set key=value`` arguments that turn the default amflow run into this ablation."""
        return " ".join(
            "--set " + shlex.quote(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
            for k, v in self.overrides.items())

    def params(self, p: Params) -> Params:
        """The params this run trains with: ``p`` with its overrides (as its ``--set`` arguments give them)."""
        nested: dict = {}
        for key, value in self.overrides.items():
            set_dotted(nested, key, value)
        return validate(deep_merge(p.model_dump(mode="json"), nested), f"ablation {self.axis}={self.value}")


def table_runs(p: Params) -> list[tuple[str, str, int]]:
    return [(d, m, s) for d in p.table_datasets for m in p.methods for s in p.seeds]


def backbone_depth(p: Params) -> int:
    """Number of blocks of the backbone, from its kwargs or timm's default config."""
    if "depth" in p.backbone.kwargs:
        return int(p.backbone.kwargs["depth"])
    return _timm_depth(p.backbone.model, json.dumps(p.backbone.kwargs, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _timm_depth(model: str, kwargs: str) -> int:
    """The depth of timm's ``model`` built with ``kwargs`` (JSON), once per process: the Snakemake rules
    plan with it, and timm takes seconds to import (lazily, only for a backbone whose kwargs omit it)."""
    import timm
    import torch

    with torch.device("meta"):  # the blocks without their weights: no memory, no initialisation
        return len(timm.create_model(model, pretrained=False, num_classes=0, **json.loads(kwargs)).blocks)


def ablation_runs(p: Params) -> list[AblationRun]:
    a = p.ablations
    runs: list[AblationRun] = []
    for seed in p.seeds:
        for dataset in a.dataset_pairs:
            for variant in a.variants:
                runs.append(AblationRun("variant", variant, dataset, seed, {"model.am_flow.variant": variant}))
        for tpu in a.tpus:
            runs.append(AblationRun("tpu", tpu, a.dataset, seed, {"model.adapter.tpu": tpu}))
        if a.tpu_with_tpa:
            for tpu in a.tpus:
                runs.append(AblationRun("tpu_tpa", tpu, a.dataset, seed, {"model.adapter.tpu": tpu}, method="tpa"))
        for source in a.source_layers:
            runs.append(AblationRun("source", str(source), a.dataset, seed, {"model.am_flow.source": source}))
        if a.num_blocks:
            depth = backbone_depth(p)
            for n in a.num_blocks:
                if not 1 <= n <= depth:
                    raise ValueError(f"ablations.num_blocks: {n} is outside 1..{depth} (the backbone's depth)")
                # The last n blocks: temporal reasoning on the most semantic features.
                runs.append(AblationRun("blocks", str(n), a.dataset, seed,
                                        {"model.adapter.blocks": list(range(depth - n, depth))}))
        for t in a.frames:
            runs.append(AblationRun("frames", str(t), a.dataset, seed, {"sampling.num_frames": t}))
        for method in a.alignments:
            runs.append(AblationRun("alignment", method, a.dataset, seed,
                                    {"model.am_flow.variant": "aligned", "model.am_flow.alignment": method}))
        for integration in a.integrations:
            runs.append(AblationRun("integration", integration, a.dataset, seed,
                                    {"model.am_flow.integration": integration}))
        for control in a.controls:
            runs.append(AblationRun("control", control, a.dataset, seed, {"model.am_flow.control": control}))
        if a.grid is not None:
            g = a.grid
            # Controls run at the dataset's own variant: the oracles and uniform scores ignore it, and
            # shuffled and rank-matched scores are AM flow's of that variant.
            settings = [(v, c) for v in g.variants for c in ("none",) if c in g.controls] + \
                [("auto", c) for c in g.controls if c != "none"]
            for dataset in g.datasets:
                for integration, (variant, control) in itertools.product(g.integrations, settings):
                    runs.append(AblationRun("grid", f"{variant}-{integration}-{control}", dataset, seed,
                                            {"model.am_flow.variant": variant,
                                             "model.am_flow.integration": integration,
                                             "model.am_flow.control": control}))
    return runs


def reference_runs(p: Params) -> list[tuple[str, str, int]]:
    """The table-1 runs of REFERENCE that the ablation rows are paired with: one per (dataset, seed) ablated;
    none when the params' methods leave REFERENCE out (the rows then have no paired difference)."""
    if REFERENCE not in p.methods:
        return []
    return list(dict.fromkeys((r.dataset, REFERENCE, r.seed) for r in ablation_runs(p)))


def find_ablation(p: Params, axis: str, value: str, dataset: str, seed: int) -> AblationRun:
    # Snakemake looks a run up for every wildcard of every ablation job while it plans the DAG: the runs
    # are listed once per params (their JSON is the key), not once per lookup.
    key = p.model_dump_json()
    if key not in _ABLATION_INDEX:
        _ABLATION_INDEX[key] = {(r.axis, r.value, r.dataset, r.seed): r for r in ablation_runs(p)}
    run = _ABLATION_INDEX[key].get((axis, value, dataset, int(seed)))
    if run is None:
        raise KeyError(f"no ablation {axis}={value} on {dataset} seed {seed} in these params")
    return run


_ABLATION_INDEX: dict[str, dict[tuple[str, str, str, int], AblationRun]] = {}
