"""Learning-rate schedule and optimizer parameter groups.

The schedule advances once per *optimizer* step (after gradient accumulation), so a fractional
``warmup_epochs`` is honoured to the step and the schedule does not depend on the world size.
Both the video trainer and the backbone pretraining use this one schedule and this one grouping.

Why not timm's ``CosineLRScheduler`` and ``param_groups_weight_decay``: the scheduler warms up from
``warmup_lr_init`` by equal increments and starts the cosine one step after the peak, so no setting
reproduces this schedule (the closest differs at 568 of the 591 steps of the default pretraining,
by up to 0.16% of the peak rate), and changing it would change every stored result. timm's
grouping puts the no-decay group first (the optimizer state of existing checkpoints would no longer
load) and decays the adapters' bare embedding and token parameters unless given their names, which
is this module's rule anyway.
"""
from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): linear warm-up, then cosine to 0.

    Warm-up starts at ``1/warmup_steps`` rather than 0 so that the first step already learns.
    """
    if total_steps <= 0:
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR's state_dict holds only numbers (the lambda itself is not saved), so it loads
    # with torch.load(weights_only=True).
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine_factor(s, total_steps, warmup_steps))


# Batch norms are not listed: their parameters are 1-D, which the rule below already covers.
_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.Embedding)


def _no_decay_names(model: torch.nn.Module) -> set[str]:
    # Norm layers, biases and embeddings (position/temporal embeddings, cls/register tokens, which
    # timm and the adapters hold as bare parameters named *embed* or *token*): decaying them only
    # pulls them towards zero.
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, _NORMS) or p.ndim <= 1 or "embed" in p_name or "token" in p_name:
                names.add(full)
    return names


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups over the *trainable* parameters only: decay for weights, none for norms/biases/embeddings."""
    skip = _no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
