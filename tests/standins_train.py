"""Tiny stand-ins and fixtures for the trainer, tracking, DDP and evaluation tests.

- :class:`TinyClips` / :class:`TinyVideoNet`: a clip dataset and a video model with the same
  interfaces as ``ClipDataset`` and ``VideoModel`` (items ``video/label/transforms/index``,
  ``set_epoch``; ``forward(video, transforms)``, a frozen part), small enough for seconds-long runs.
- :func:`make_tiny_dataset` / :func:`tiny_params`: a real frame cache (``write_cache``), classes and
  ``dataset.json`` with ``time_reversal``, and params with a tiny random-weight ViT, for end-to-end
  tests of ``train_run`` / ``evaluate_run`` / ``predict_video`` with the real model and data code.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

CLASSES = ["move_left", "move_right", "move_up", "move_down"]
TIME_REVERSAL = {"0": 1, "1": 0, "2": 3, "3": 2}


def moving_square(label: int, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, size, size, 3]: a bright square moving in the class's direction over a noisy background."""
    out = rng.integers(0, 60, size=(frames, size, size, 3), dtype=np.uint8)
    dx, dy = [(-1, 0), (1, 0), (0, -1), (0, 1)][label]
    side = max(2, size // 4)
    span = size - side
    x0 = int(rng.integers(0, span + 1)) if dx == 0 else (span if dx < 0 else 0)
    y0 = int(rng.integers(0, span + 1)) if dy == 0 else (span if dy < 0 else 0)
    for t in range(frames):
        x = int(round(x0 + dx * t * span / max(1, frames - 1)))
        y = int(round(y0 + dy * t * span / max(1, frames - 1)))
        out[t, y:y + side, x:x + side] = (230, 200, 40)
    return out


class TinyClips(Dataset):
    """Moving-square clips, ``[T, 3, S, S]`` float; per-item noise from ``(seed, epoch, index)``."""

    def __init__(self, n: int, frames: int = 4, size: int = 8, seed: int = 0, train: bool = True):
        rng = np.random.default_rng(1234 + n)
        self.labels = np.arange(n) % len(CLASSES)
        self.base = [moving_square(int(y), frames, size, rng) for y in self.labels]
        self.seed, self.epoch, self.train = seed, 0, train

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        x = self.base[index].astype(np.float32) / 255.0
        if self.train:  # augmentation noise that depends on the epoch, like ClipDataset's crops
            x = x + 0.1 * np.random.default_rng([self.seed, self.epoch, index]).standard_normal(x.shape)
        video = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
        t = video.shape[0]
        return {"video": video, "label": int(self.labels[index]),
                "transforms": torch.eye(3).expand(t - 1, 3, 3).clone(), "index": int(index)}


class TinyVideoNet(nn.Module):
    """Frozen per-frame encoder + trainable temporal conv, norm and head; optional dropout (uses the RNG)."""

    def __init__(self, size: int = 8, num_classes: int = 4, dim: int = 48, dropout: float = 0.0):
        super().__init__()
        self.encoder = nn.Linear(3 * size * size, dim)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.temporal = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        self.last_dtype = None

    def forward(self, video: torch.Tensor, transforms=None) -> torch.Tensor:
        b, t = video.shape[:2]
        z = self.encoder(video.flatten(2)) + self.pos_embed          # [B, T, D]
        z = self.temporal(z.transpose(1, 2)).transpose(1, 2)
        z = self.drop(torch.relu(self.norm(z))).mean(dim=1)
        out = self.head(z)
        self.last_dtype = out.dtype
        return out


def tiny_spec(**overrides):
    from amflow.params import TrainSpec

    base = dict(epochs=3, batch_size=8, lr=0.01, weight_decay=0.01, warmup_epochs=0.5, label_smoothing=0.1,
                grad_clip=1.0, num_workers=0, device="cpu")
    base.update(overrides)
    return TrainSpec(**base)


def history_without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "clips_per_s", "data_wait_frac")} for r in history]


# --------------------------------------------------------------------------- real data, real model
def make_tiny_dataset(data_dir: Path, name: str = "tiny", size: int = 16, frames: int = 8,
                      per_split: dict | None = None, seed: int = 0, params=None) -> Path:
    """``data/<name>-<spec>/`` with classes.txt and dataset.json (time_reversal), and its frame cache, where
    the runs of ``params`` (default: :func:`tiny_params` for ``name`` and ``size``) look for them."""
    from amflow import paths
    from amflow.data.frame_cache import write_cache

    key = paths.dataset_key(params or tiny_params(name=name, size=size), name)
    per_split = per_split or {"train": 24, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    root = paths.dataset_dir(data_dir, key)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    videos = []
    for split, n in per_split.items():
        for i in range(n):
            label = i % len(CLASSES)
            videos.append({"video_id": f"{split}{i:03d}", "split": split, "label": label,
                           "frames": moving_square(label, frames, size, rng)})
    write_cache(paths.frames_dir(data_dir, key), videos)
    (root / "dataset.json").write_text(json.dumps({"source": "test", "time_reversal": TIME_REVERSAL}))
    return root


def tiny_params(name: str = "tiny", size: int = 16, num_frames: int = 4, **train):
    """Params for the tiny dataset: a 2-block ViT with random weights, a few quick epochs on CPU."""
    from amflow.params_io import validate

    train_cfg = dict(epochs=2, batch_size=8, lr=0.005, warmup_epochs=0.5, device="cpu", threads=1)
    train_cfg.update(train)
    return validate({
        "name": "tiny",
        "datasets": {name: {"source": "synthmotion", "short_side": size,
                            "synth": {"camera": "static", "resolution": 32, "frames": 8}}},
        "table_datasets": [name],
        "sampling": {"mode": "segment", "num_frames": num_frames, "crop_size": size, "train_scale": [0.8, 1.0],
                     "test_clips": 1, "test_crops": 1},
        "backbone": {"model": "vit_tiny_patch16_224", "weights": "random",
                     "kwargs": {"img_size": size, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "model": {"adapter": {"bottleneck": 8}, "am_flow": {"variant": "static"}},
        "train": train_cfg,
    })
