"""What defines a run of each stage: its identity, one document from which every tool takes its view.

An identity names the run (dataset, method, seed: whatever the stage has) and holds the params it
depends on, each under its dotted key in the params file (``{"datasets.synth_moving": {...},
"train.epochs": 30, ...}``), plus anything else that defines it but is not a params value (the contents
of a list dataset's lists). From it, and from nothing else:

- :attr:`Identity.digest`: a training state or checkpoint is used only under the same digest
  (:func:`amflow.runs.check_digest`, the trainer's resume), and ``train.json`` names its checkpoint by it;
- the Snakemake rerun trigger and the DVC stage's params (each rule's ``params.dvc_params``, in
  ``workflow/rules/``: :attr:`Identity.params`, key -> value; DVC lists the keys the params file states);
- the params an MLflow run logs (:func:`amflow.tracking.open_run`).

A params section is taken whole, unless a key under it does not define the run (``train.num_workers``:
how the run is computed, not what it computes): then its other keys are taken one by one, so that
changing that key reruns nothing, in either tool.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from amflow import paths
from amflow.params import Params

DIGEST_CHARS = 16
# Keys of a training that change how it runs, not what it computes.
TRAIN_HOW = ("train.num_workers", "train.threads", "train.device")
# Sampling keys only evaluation reads (validation during training always uses one view).
TEST_VIEWS = ("test_clips", "test_crops")


@dataclass(frozen=True)
class Identity:
    """One run of one stage: ``names`` (dataset, method, seed...), ``params`` (dotted params key ->
    value) and ``extra`` (what else defines it)."""

    stage: str
    names: dict[str, Any]
    params: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def document(self) -> dict:
        return {"stage": self.stage, "names": self.names, "params": self.params, "extra": self.extra}

    @property
    def digest(self) -> str:
        text = json.dumps(self.document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]

    def leaves(self) -> dict[str, Any]:
        """Every value of the document under its dotted key (``params.train.lr``...)."""
        return _leaves(self.document)

    def differences(self, other: "Identity") -> dict[str, tuple]:
        """The dotted keys whose values differ, ``key -> (self's, other's)``."""
        a, b = self.leaves(), other.leaves()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _get(data: dict, key: str) -> Any:
    node = data
    for part in key.split("."):
        node = node[part]
    return node


def select(params: Params, keys: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{key: value}`` of the params ``keys`` (dotted), without the keys ``exclude``: a key with an
    excluded key under it is given as its other keys, one level down (recursively)."""
    data, exclude = params.model_dump(mode="json"), tuple(exclude)
    out: dict[str, Any] = {}

    def take(key: str, value: Any) -> None:
        if key in exclude:
            return
        if isinstance(value, dict) and any(e.startswith(key + ".") for e in exclude):
            for sub, v in value.items():
                take(f"{key}.{sub}", v)
        else:
            out[key] = value

    for key in keys:
        take(key, _get(data, key))
    return out


def of_keys(params: Params, stage: str, *keys: str, names: Optional[dict] = None) -> Identity:
    """A stage whose run is defined by whole params sections (a dataset's preparation, the tables)."""
    return Identity(stage, dict(names or {}), select(params, keys))


def sampling_key(params: Params, dataset: str) -> str:
    """The params key of a dataset's sampling (:meth:`amflow.params.Params.sampling_for`)."""
    return f"sampling_overrides.{dataset}" if dataset in params.sampling_overrides else "sampling"


def _dataset(params: Params, dataset: str) -> tuple[str, dict]:
    """A dataset's params key, and the contents of its lists when it is given as lists (editing one
    makes another dataset: :func:`amflow.paths.dataset_key`)."""
    lists = paths.lists_digest(params.dataset(dataset))
    return f"datasets.{dataset}", ({"dataset_lists": lists} if lists is not None else {})


def training(params: Params, dataset: str, method: str, seed: int) -> Identity:
    """A training run: its dataset, its sampling (not the test views), the backbone, the model and the
    training (not :data:`TRAIN_HOW`). Its inputs' contents (frames, backbone file, camera decision) are
    the tools' inputs, not part of it."""
    key, extra = _dataset(params, dataset)
    sampling = sampling_key(params, dataset)
    chosen = select(params, (key, sampling, "backbone", "model", "train"),
                    exclude=(*TRAIN_HOW, *(f"{sampling}.{k}" for k in TEST_VIEWS)))
    return Identity("train", {"dataset": dataset, "method": method, "seed": int(seed)}, chosen, extra)


def evaluation(params: Params, dataset: str, method: str, seed: int) -> Identity:
    """An evaluation of a trained run: the dataset and its sampling, test views included (the run
    itself is its input)."""
    key, extra = _dataset(params, dataset)
    return Identity("evaluate", {"dataset": dataset, "method": method, "seed": int(seed)},
                    select(params, (key, sampling_key(params, dataset))), extra)


def camera_motion(params: Params, dataset: str) -> Identity:
    key, extra = _dataset(params, dataset)
    return Identity("camera_motion", {"dataset": dataset}, select(params, (key, "camera_motion")), extra)


def localisation(params: Params, dataset: str, val_videos: Optional[int] = None) -> Identity:
    """``amflow localise``: AM flow against the actor on the val clips (``val_videos``, once counted)."""
    key, extra = _dataset(params, dataset)
    if val_videos is not None:
        extra = {**extra, "val_videos": int(val_videos)}
    return Identity("localise", {"dataset": dataset},
                    select(params, (key, sampling_key(params, dataset), "backbone", "model.am_flow")), extra)


def pretraining(params: Params, images: Optional[dict] = None) -> Identity:
    """``amflow pretrain-backbone``: the recipe, the backbone, the image set and the normalisation;
    ``images``: the image set's own record of its spec, once it exists."""
    return Identity("pretrain_backbone", {},
                    select(params, ("backbone", "pretrain", "pretrain_images", "sampling.mean", "sampling.std")),
                    {"images": images} if images is not None else {})


def sweep(params: Params, dataset: str, method: str, study: str, spec: dict) -> Identity:
    """An Optuna study's parent run: its search (the sweep spec; not its number of trials, which a
    resumed study may raise). The trials are training runs of their own."""
    return Identity("sweep", {"dataset": dataset, "method": method, "study": study}, {},
                    {"sweep": {k: v for k, v in spec.items() if k != "trials"}})
