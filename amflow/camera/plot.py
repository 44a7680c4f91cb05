"""The camera-motion histogram: per-video background displacement with the moving threshold."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

from amflow import io

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_displacements(displacements: Sequence[float], threshold: float, path: str | Path, title: str = "") -> None:
    """Histogram of per-video displacement (fraction of the frame diagonal) with the threshold line.

    Log-spaced bins: static videos sit near the noise floor (1e-4 to 1e-3), moving ones decades above.
    """
    d = np.asarray([x for x in displacements if x is not None and np.isfinite(x)], dtype=np.float64)
    floor = 1e-5
    lo = min(threshold / 100, d.min() if d.size else threshold)
    hi = max(threshold * 10, d.max() if d.size else threshold)
    bins = np.geomspace(max(lo, floor) / 1.5, hi * 1.5, 40)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        ax.hist(np.maximum(d, floor), bins=bins, color="tab:blue", alpha=0.8,
                label=f"videos (n={d.size})")
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"moving threshold {threshold:g}")
        ax.set_xscale("log")
        ax.set_xlabel("median background displacement per frame pair / frame diagonal")
        ax.set_ylabel("videos")
        if title:
            ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        io.write_png(fig, path)
    finally:
        plt.close(fig)
