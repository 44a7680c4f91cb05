"""``amflow prepare``: make ``data/<dataset>-<spec>/`` ready in the common annotation format.

The dataset's ``source:`` names its source in :mod:`amflow.data.sources`; every source goes through
the same writer (:func:`amflow.data.sources.base.write_dataset`, which also states the split policy):
``missing.csv``, ``classes.txt``, ``annotations/{train,val,test}.csv`` and, last, ``dataset.json``.
"""
from __future__ import annotations

from pathlib import Path

from amflow.data import sources
from amflow.data.sources.base import write_dataset
from amflow.errors import AmflowError
from amflow.params import Params


def prepare_dataset(params: Params, dataset_name: str, out_dir: Path) -> dict:
    """Generate, download or verify dataset ``dataset_name`` into ``out_dir`` (``data/<dataset>-<spec>``)."""
    try:
        spec = params.dataset(dataset_name)
    except KeyError as exc:
        raise AmflowError(f"{exc.args[0]}; pass one of them with --dataset") from None
    return write_dataset(sources.get(spec.source), spec, dataset_name, Path(out_dir))
