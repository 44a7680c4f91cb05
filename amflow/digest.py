"""The params digest of a run: what defines its training, hashed (torch-free, so that a check of a run's
identity costs no model import: ``amflow evaluate`` reusing the evaluation its training made)."""
from __future__ import annotations

import hashlib
import json

from amflow import paths
from amflow.params import Params

# Sampling keys that only matter to evaluation (validation always uses one view): not in the digest.
TEST_VIEW_KEYS = ("test_clips", "test_crops")


def digest_doc(params: Params, dataset: str) -> dict:
    """Everything that defines this run's training (not workers, threads, device or tracking), the
    contents of a list dataset's lists included: what :func:`params_digest` hashes."""
    train = params.train.model_dump(mode="json")
    for key in ("num_workers", "threads", "device"):
        train.pop(key, None)
    sampling = params.sampling_for(dataset).model_dump(mode="json", exclude=set(TEST_VIEW_KEYS))
    spec = params.dataset(dataset)
    doc = {"dataset": spec.model_dump(mode="json"), "sampling": sampling,
           "backbone": params.backbone.model_dump(mode="json"),
           "model": params.model.model_dump(mode="json"), "train": train}
    lists = paths.lists_digest(spec)
    if lists is not None:  # a dataset given as lists is also its lists' contents (the other keys stay as they were)
        doc["dataset_lists"] = lists
    return doc


def params_digest(params: Params, dataset: str) -> str:
    """Hash of :func:`digest_doc`. A training state is only resumed under the same digest, so a run
    folder never mixes two settings."""
    return hashlib.sha256(json.dumps(digest_doc(params, dataset), sort_keys=True).encode()).hexdigest()[:16]


def digest_differences(used: Params, other: Params, dataset: str) -> dict[str, tuple]:
    """The dotted keys of :func:`digest_doc` whose values differ, ``key -> (used, other)``."""
    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    a, b = flat(digest_doc(used, dataset)), flat(digest_doc(other, dataset))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
