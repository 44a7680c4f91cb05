"""Training checkpoints: written atomically every epoch, read back with ``weights_only=True``.

The trainer saves the training state after every epoch (``train_state.pt``: what an interrupted run
resumes from) and, once training is complete, publishes the last one as the run's ``checkpoint.pt``
(:func:`publish`), the file evaluation reads. Only the finished model is a workflow output: Snakemake
deletes a failed job's outputs, which must not take the state a rerun resumes from.

A checkpoint holds only tensors and primitive containers (dict, list, str, int, float, bool, None),
so that loading it cannot execute code. Contents (``FORMAT`` 1):

- ``format``: 1; ``epoch``: number of completed epochs;
- ``model``: the *trainable* parameters and the buffers of the model (the frozen backbone is rebuilt
  from its weights file, so it is not duplicated in every run), keyed as in ``state_dict()``;
- ``frozen_fingerprint``: float64 checksums of the frozen parameters, to detect a changed backbone;
- ``optimizer``, ``scheduler``: their ``state_dict()``s;
- ``history``: one dict of floats per completed epoch (the rows of ``train_log.csv``);
- ``elapsed_s``: training seconds so far; ``cpu_s``: the process's CPU seconds in those epochs;
  ``meta``: what the run is (dataset, method, seed, classes,
  resolved AM flow variant, params digest...).

RNG state is not stored: the trainer reseeds every RNG at the start of each epoch from
``(seed, epoch, rank)``, which makes a resumed run bitwise equal to an uninterrupted one for any
world size without per-rank state.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from amflow import io
from amflow.errors import AmflowError

FORMAT = 1
REQUIRED_KEYS = ("format", "epoch", "model", "optimizer", "scheduler", "history", "meta")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes, plus every buffer (small, and may be updated by training)."""
    state = model.state_dict(keep_vars=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in state.items() if k in trainable or k in buffers}


def frozen_fingerprint(model: torch.nn.Module) -> list[float]:
    """Sum and sum of squares over the frozen parameters: cheap, and changes if the backbone does."""
    total, squares = 0.0, 0.0
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                d = p.detach().double()
                total += float(d.sum())
                squares += float((d * d).sum())
    return [total, squares]


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a :func:`trainable_state` into ``model``; every trainable parameter must be present."""
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(expected - set(state))
    unknown = sorted(set(state) - set(model.state_dict()))
    if missing or unknown:
        raise AmflowError(f"{path}: the checkpoint does not match the model (missing {missing[:5]}, "
                          f"unexpected {unknown[:5]}); it was written by a different model or code version: "
                          f"delete it to retrain")
    model.load_state_dict(state, strict=False)


def check_fingerprint(model: torch.nn.Module, saved: list[float], path: Path, rel: float = 1e-6) -> None:
    now = frozen_fingerprint(model)
    for a, b in zip(now, saved):
        if abs(a - b) > rel * max(1.0, abs(a), abs(b)):
            raise AmflowError(f"{path}: the frozen backbone differs from the one this checkpoint was trained with "
                              f"(checksum {now} vs {saved}); the backbone weights file changed since training. "
                              f"Restore it, or delete the run folder and retrain")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    # Through a Python file: a full disk then raises OSError(ENOSPC), which atomic_path reports with
    # the path (torch's own writer turns it into an opaque RuntimeError).
    with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def publish(state_path: Path, path: Path) -> None:
    """Make the training state at ``state_path`` the run's checkpoint ``path``, atomically: a hard link
    (no second copy of the weights), or a copy where the file system has no hard links."""
    with io.atomic_path(path) as tmp:
        try:
            os.link(state_path, tmp)
        except OSError:  # e.g. EPERM or ENOTSUP on some network and FUSE file systems
            shutil.copyfile(state_path, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; anything unreadable becomes an AmflowError naming the file and the fix."""
    path = Path(path)
    fix = f"delete it (rm '{path}') to restart this run from epoch 0"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001  (zip, unpickling and EOF errors all mean "corrupt")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise AmflowError(f"{path}: checkpoint is corrupted or unreadable ({type(exc).__name__}: {first[:200]}); "
                          f"{fix}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise AmflowError(f"{path}: not an amflow training checkpoint (keys missing); {fix}")
    if state["format"] != FORMAT:
        raise AmflowError(f"{path}: checkpoint format {state['format']} is not supported (expected {FORMAT}); {fix}")
    return state
