"""Still clips: videos whose content does not move, made from a split's own frames.

Each is the first frame of one clip (the test view the models see), held for every frame, with fresh
Gaussian sensor noise on each frame and an H.264 round trip in the project's settings
(:data:`amflow.data.video.CODEC`): what consecutive frames of a still scene differ by, codec and
sensor noise only. AM flow's absolute noise floor is calibrated on them
(``model.am_flow.noise_floor``, :func:`amflow.models.frozen_flow.noise_levels`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from amflow.data.clips import ClipDataset
from amflow.data.video import encode_mp4, read_video
from amflow.params import SamplingSpec

DOMAIN = 0x5354494C  # seed-sequence domain of the still clips' noise
FPS = 25


def still_clips(frames_dir: str | Path, split: str, sampling: SamplingSpec, count: int, sigma: float,
                seed: int = 0) -> torch.Tensor:
    """uint8 ``[M, T, 3, S, S]`` (``M = min(count, clips in the split)``, spread evenly over the split),
    ``T`` and ``S`` from ``sampling``; ``sigma`` is the noise's standard deviation in [0, 1] units."""
    view = sampling.model_copy(update={"test_clips": 1, "test_crops": 1})
    clips = ClipDataset(frames_dir, split, view, train=False)
    picks = np.unique(np.linspace(0, len(clips) - 1, min(count, len(clips))).round().astype(int))
    rng = np.random.default_rng(np.random.SeedSequence([DOMAIN, seed]))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, i in enumerate(picks):
            first = clips[int(i)]["video"][0].permute(1, 2, 0).numpy().astype(np.float32)   # [S, S, 3]
            noisy = first[None] + rng.standard_normal((view.num_frames, *first.shape)).astype(np.float32) * (255 * sigma)
            path = Path(tmp) / f"still_{k}.mp4"
            encode_mp4(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), path, FPS)
            out.append(read_video(path)[0])
    return torch.from_numpy(np.stack(out)).permute(0, 1, 4, 2, 3).contiguous()
