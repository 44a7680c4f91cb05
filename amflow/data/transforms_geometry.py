"""Clip-space geometry: the pixel maps of crop, resize and flip, and transforms carried through them.

Convention (docs/architecture.md): pixel centres sit at integer coordinates, and a 3x3 matrix acts
on homogeneous column vectors ``(x, y, 1)``. Resizing ``n`` pixels to ``m`` maps centre to centre,
``x_out = (x_in + 0.5) * m / n - 0.5`` (what ``cv2.resize`` does), so cropping ``[x0, x0 + w)`` and
resizing it to ``m`` is ``x_out = (x_in - x0 + 0.5) * m / w - 0.5``.

A camera transform ``H`` (frame t pixels -> frame t+1 pixels) seen through an image map ``C``
applied to both frames becomes ``C H C^-1``.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np
import torch

Matrices = TypeVar("Matrices", np.ndarray, torch.Tensor)


def crop_resize_matrix(x0: float, y0: float, w: float, h: float, out_w: int, out_h: int) -> np.ndarray:
    """Map from source pixels to output pixels for: crop ``[x0, x0+w) x [y0, y0+h)``, resize to out."""
    sx, sy = out_w / w, out_h / h
    return np.array([[sx, 0.0, sx * (0.5 - x0) - 0.5],
                     [0.0, sy, sy * (0.5 - y0) - 0.5],
                     [0.0, 0.0, 1.0]])


def translation_matrix(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def hflip_matrix(width: int) -> np.ndarray:
    """Horizontal flip of an image ``width`` pixels wide: ``x -> width - 1 - x``."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def conjugate(transforms: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``C H C^-1`` for each H in ``[..., 3, 3]``, renormalised so that ``H[2, 2] = 1``."""
    out = c @ transforms @ np.linalg.inv(c)
    return normalise(out)


def normalise(h: Matrices) -> Matrices:
    """Scale homographies ``[..., 3, 3]`` (numpy or torch) so that ``h[..., 2, 2] == 1`` where that entry is not ~0."""
    z = h[..., 2:3, 2:3]
    if isinstance(h, torch.Tensor):
        return h / torch.where(z.abs() > 1e-12, z, torch.ones_like(z))
    return h / np.where(np.abs(z) > 1e-12, z, 1.0)


def invert(h: Matrices) -> Matrices:
    """The inverse homographies of ``[..., 3, 3]`` (numpy or torch, in their own dtype), normalised."""
    return normalise(torch.linalg.inv(h) if isinstance(h, torch.Tensor) else np.linalg.inv(h))


def compose_between(consecutive: np.ndarray, valid: np.ndarray, frames: Sequence[int]) -> np.ndarray:
    """Transforms between successive entries of ``frames`` from one video's consecutive transforms.

    ``consecutive[k]`` maps frame k to k+1 (``valid[k]`` False: treated as identity). For ``a < b``
    the result is ``H_{b-1} ... H_{a+1} H_a``; for ``a > b`` (looped or reversed order) it is the
    inverse of the forward map from b to a; for ``a == b`` the identity. Returns ``[len(frames)-1, 3, 3]``.
    """
    frames = [int(f) for f in frames]
    out = np.tile(np.eye(3), (max(len(frames) - 1, 0), 1, 1))
    for i, (a, b) in enumerate(zip(frames[:-1], frames[1:])):
        lo, hi = min(a, b), max(a, b)
        m = np.eye(3)
        for k in range(lo, hi):
            if valid[k]:
                m = consecutive[k].astype(np.float64) @ m
        out[i] = normalise(m) if a <= b else invert(m)
    return out
