"""Classification metrics on (probabilities, labels); numpy and scikit-learn, no torch needed.

Mean class accuracy (scikit-learn's balanced accuracy) is averaged over the classes *present in the
ground truth* only. MMAction2 builds
its confusion matrix over the union of predicted and true labels and counts a class with no
ground-truth sample as 0, so a class that is predicted but absent from the split lowers the mean;
that matters for class-subset protocols (Toyota Smarthome CV1/CV2). Here such a class is ignored.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"expected probs [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
    return probs, labels


def topk_accuracy(probs, labels, k: int) -> float:
    """Share of items whose true class is among the k highest scores (ties broken by class index).

    Not scikit-learn's ``top_k_accuracy_score``: it breaks ties towards the *higher* class index, so
    its top-1 would disagree with ``argmax`` (the predictions of the confusion matrix and the mean
    class accuracy) whenever scores tie, and it fails on an empty split instead of giving NaN.
    """
    probs, labels = _check(probs, labels)
    if labels.size == 0:
        return math.nan
    k = min(k, probs.shape[1])
    # Stable sort on -probs: among equal scores the lower class index ranks first, deterministically.
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((order == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def per_class_accuracy(labels, preds, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy per class, support per class); accuracy is NaN where the class has no ground truth."""
    cm = confusion_matrix(labels, preds, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return acc, support


def mean_class_accuracy(labels, preds) -> float:
    """Mean of per-class recall over the classes present in ``labels`` (absent classes are ignored)."""
    # scikit-learn's balanced_accuracy_score, to the last bit (the same recalls, averaged in the same order),
    # without importing scikit-learn and SciPy: seconds of every evaluation's start-up.
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if len(labels) == 0:
        return math.nan
    acc, support = per_class_accuracy(labels, preds, int(max(labels.max(), preds.max())) + 1)
    return float(np.mean(acc[support > 0]))


def per_class_table(labels, preds, class_names: Sequence[str]) -> pd.DataFrame:
    n = len(class_names)
    acc, support = per_class_accuracy(labels, preds, n)
    predicted = np.bincount(np.asarray(preds, dtype=np.int64), minlength=n)[:n]
    cm = confusion_matrix(labels, preds, n)
    return pd.DataFrame({
        "class_idx": np.arange(n), "class_name": list(class_names), "support": support,
        "correct": np.diag(cm), "predicted": predicted, "accuracy": acc,
    })
