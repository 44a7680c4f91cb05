"""Plots of one run: the test confusion matrix and the training curves.

Figures are drawn on matplotlib's object API with the Agg canvas (no pyplot state, no display), and
saved atomically like every other output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from amflow import io


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    io.write_png(fig, path, dpi=120, bbox_inches="tight")


def confusion_png(cm: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (each row: where that class's test clips went)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = min(16.0, 2.0 + 0.45 * n)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 40:
        ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=list(class_names), fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "test confusion matrix (counts; colour = row share)")
    _save(fig, path)


def curves_png(history: Sequence[dict], path: Path, title: str = "") -> None:
    """Loss (train, val) and accuracy (train, val top-1) per epoch."""
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train (label-smoothed)")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [r["val_top1"] for r in history], marker="o", label="val top-1")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    _save(fig, path)
