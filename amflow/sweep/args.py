"""Command-line arguments of ``amflow sweep`` (argparse and the params' names only, so ``amflow --help``
stays fast)."""
from __future__ import annotations

import argparse
from pathlib import Path

from amflow import methods


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params/default.yaml", help="base params file the trials start from")
    p.add_argument("--space", default="params/sweep.yaml",
                   help="search space, trial count, sampler and pruner settings (default params/sweep.yaml)")
    p.add_argument("--dataset", required=True, help="dataset to tune on (its val split is the objective)")
    p.add_argument("--method", default="amflow", choices=methods.names(),
                   help="method whose hyperparameters are tuned (default amflow)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the base params file for every trial and for best.yaml, e.g. "
                        "--set datasets.synth_moving.synth.split_sizes.train=120 (repeatable; value parsed as YAML)")
    p.add_argument("--trials", type=int, default=None,
                   help="number of trials wanted: complete, pruned, or failed with an error (default: from --space)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes sharing one study storage on this machine")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///file.db (default, under the sweep folder), "
                        "journal:PATH (a journal file; safe for several local processes), or "
                        "postgresql://user:pass@host/db (several machines)")
    p.add_argument("--study-name", default=None,
                   help="study name; rerunning with the same name continues an interrupted sweep "
                        "(default: <params name>-<dataset>-<method>)")
    p.add_argument("--output", type=Path, default=None,
                   help="where to write the best params (default results/<name>/sweeps/<dataset>/<method>/best.yaml)")
    p.add_argument("--data-dir", default="data", type=Path, help="root of datasets and frame caches (default: data)")
    p.add_argument("--results-dir", default="results", type=Path,
                   help="root of results; the sweep writes under <results-dir>/sweeps/ (default: results)")
