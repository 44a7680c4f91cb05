"""Running a video model on batches of clips: collation, bf16 autocast, and class probabilities
averaged over test views. Training, evaluation, ``amflow predict`` and the diagnostics share them."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, TypeVar

import torch

S = TypeVar("S")


def single_view(sampling: S) -> S:
    """Validation sampling: the test sampling (the params' ``sampling``) with one clip and one crop (fast,
    every epoch)."""
    return sampling.model_copy(update={"test_clips": 1, "test_crops": 1})


def collate_clips(items: list[dict]) -> dict[str, Any]:
    """Stack clip dicts; ``transforms`` only when every item has them (else None), ``coverage`` (the
    actor's ground truth, for the controls) and ``distractor_coverage`` only when every item has it
    (else absent)."""
    out = {
        "video": torch.stack([torch.as_tensor(it["video"]) for it in items]),
        "label": torch.as_tensor([int(it["label"]) for it in items], dtype=torch.long),
        "index": torch.as_tensor([int(it.get("index", -1)) for it in items], dtype=torch.long),
    }
    tr = [it.get("transforms") for it in items]
    out["transforms"] = None if any(t is None for t in tr) else torch.stack([torch.as_tensor(t) for t in tr])
    for key in ("coverage", "distractor_coverage"):
        if items and all(key in it for it in items):
            out[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
    return out


def coverage_input(coverage: Optional[torch.Tensor], device: torch.device) -> dict:
    """The model's ``coverage`` keyword when the batch carries it; nothing otherwise, so models without
    the argument (every method but ``amflow``) are called as before."""
    return {} if coverage is None else {"coverage": coverage.to(device, non_blocking=True)}


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; a no-op context on CPU (CPU autocast is slower, not faster)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_probs(model: torch.nn.Module, video: torch.Tensor, transforms: Optional[torch.Tensor],
               device: torch.device, amp: bool, normalise: Optional[Callable] = None,
               coverage: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Class probabilities per item, averaging the softmax over views for ``[B, V, T, 3, S, S]`` input.

    ``normalise`` turns the clips into model input once on ``device`` (uint8 clips: the dataset's);
    ``coverage`` is the ground-truth actor coverage an ``oracle`` control reads."""
    video = video.to(device, non_blocking=True)
    if normalise is not None:
        video = normalise(video)
    if transforms is not None:
        transforms = transforms.to(device, non_blocking=True)
    views = 1
    if video.ndim == 6:
        b, views = video.shape[:2]
        video = video.flatten(0, 1)
        if transforms is not None:
            transforms = transforms.flatten(0, 1)
        if coverage is not None:
            coverage = coverage.flatten(0, 1)
    with autocast(device, amp):
        logits = model(video, transforms, **coverage_input(coverage, device))
    probs = logits.float().softmax(dim=-1)
    if views > 1:
        probs = probs.view(b, views, -1).mean(dim=1)
    return probs
