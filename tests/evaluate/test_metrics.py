"""Metrics on hand-made predictions, including the mean-class-accuracy gotcha (docs/design.md 3.3)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from amflow.evaluate import metrics as M
from amflow.evaluate.evaluation import EvalOutputs, reverse_clips, score
from amflow.train.training import epochs_to_fraction


def onehotish(preds, num_classes, second=None):
    """Scores where ``preds`` ranks first and ``second`` (if given) second."""
    p = np.full((len(preds), num_classes), 0.01)
    for i, c in enumerate(preds):
        p[i, c] = 0.9
        if second is not None:
            p[i, second[i]] = 0.5
    return p


def test_topk_by_hand():
    labels = np.array([0, 1, 2, 3])
    probs = np.array([[0.7, 0.2, 0.1, 0.0],    # top1 right
                      [0.5, 0.3, 0.2, 0.0],    # label 1 second -> top2 only
                      [0.4, 0.3, 0.2, 0.1],    # label 2 third -> top3 only
                      [0.1, 0.2, 0.3, 0.4]])   # right
    assert M.topk_accuracy(probs, labels, 1) == pytest.approx(0.5)
    assert M.topk_accuracy(probs, labels, 2) == pytest.approx(0.75)
    assert M.topk_accuracy(probs, labels, 3) == pytest.approx(1.0)
    assert M.topk_accuracy(probs, labels, 5) == pytest.approx(1.0)  # k larger than C: every class counts


def test_topk_ties_are_deterministic():
    probs = np.array([[0.5, 0.5, 0.0]])
    assert M.topk_accuracy(probs, np.array([0]), 1) == 1.0   # lower index wins a tie
    assert M.topk_accuracy(probs, np.array([1]), 1) == 0.0


def test_mean_class_accuracy_ignores_classes_absent_from_ground_truth():
    # 4 classes; class 3 never occurs in the ground truth but is predicted once.
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 3, 1, 0, 2, 2])
    # per class: 0 -> 3/4, 1 -> 1/2, 2 -> 2/2; mean over the 3 present classes
    assert M.mean_class_accuracy(labels, preds) == 0.75                   # (3/4 + 1/2 + 2/2) / 3, exactly
    # MMAction2's union-of-labels version would count class 3 as 0 and report (0.75+0.5+1+0)/4
    assert M.mean_class_accuracy(labels, preds) != pytest.approx((0.75 + 0.5 + 1.0 + 0.0) / 4)
    acc, support = M.per_class_accuracy(labels, preds, 4)
    assert list(support) == [4, 2, 2, 0] and math.isnan(acc[3])


def test_mean_class_accuracy_of_an_empty_split_is_nan():
    assert math.isnan(M.mean_class_accuracy(np.zeros(0, int), np.zeros(0, int)))


def test_mean_class_accuracy_differs_from_top1_under_imbalance():
    labels = np.array([0] * 8 + [1] * 2)
    preds = np.zeros(10, dtype=int)                      # always class 0
    assert M.topk_accuracy(onehotish(preds, 2), labels, 1) == pytest.approx(0.8)
    assert M.mean_class_accuracy(labels, preds) == pytest.approx(0.5)


def test_per_class_table_and_confusion():
    labels = np.array([0, 0, 1, 2])
    preds = np.array([0, 1, 1, 1])
    cm = M.confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    t = M.per_class_table(labels, preds, ["a", "b", "c"])
    assert t["support"].tolist() == [2, 1, 1]
    assert t["predicted"].tolist() == [1, 3, 0]
    assert t["accuracy"].tolist() == [0.5, 1.0, 0.0]


def test_epochs_to_90pct_of_final():
    # final 0.9 -> target 0.81: epoch 3 has 0.8 (short), epoch 4 has 0.85
    assert epochs_to_fraction([0.1, 0.5, 0.8, 0.85, 0.9], 0.9) == 4
    assert epochs_to_fraction([0.9, 0.2, 0.5], 0.9) == 1               # first epoch counts, even if it dips later
    assert epochs_to_fraction([], 0.9) is None


def test_reverse_clips_flips_time_and_inverts_transforms():
    T = 4
    video = torch.arange(T, dtype=torch.float32).view(1, T, 1, 1, 1).expand(1, T, 3, 2, 2).clone()
    shifts = [torch.tensor([[1.0, 0, t + 1], [0, 1, 0], [0, 0, 1]]) for t in range(T - 1)]  # H_t: x += t+1
    transforms = torch.stack(shifts)[None]
    v, tr = reverse_clips(video, transforms)
    assert v[0, :, 0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    # H'_t = inv(H_{T-2-t}): reversed frame t -> t+1 moves x back by (T-1-t)
    assert [float(tr[0, t, 0, 2]) for t in range(T - 1)] == [-3.0, -2.0, -1.0]
    # multi-view layout [B, V, T, 3, H, W] / [B, V, T-1, 3, 3] flips the same axis
    v6, tr6 = reverse_clips(video[:, None].expand(1, 2, T, 3, 2, 2), transforms[:, None].expand(1, 2, T - 1, 3, 3))
    assert v6[0, 1, :, 0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    assert torch.allclose(tr6[0, 1], tr[0])


def test_score_reports_reversal_on_the_partner_subset():
    # classes 0<->1 are partners, class 2 has none; 4 test items
    probs = onehotish([0, 1, 1, 2], 3)
    labels = np.array([0, 1, 0, 2])
    rev_rows = np.array([0, 1, 2])                    # items of classes with a partner
    rev_probs = onehotish([1, 1, 1], 3)               # reversed clips: predicted 1, 1, 1
    rev_targets = np.array([1, 0, 1])                 # partners of labels 0, 1, 0
    out = EvalOutputs(probs, labels, np.arange(4), rev_probs, rev_targets, rev_rows)
    s = score(out)
    assert s["top1"] == pytest.approx(0.75)
    assert s["reversed_top1"] == pytest.approx(2 / 3)
    assert s["forward_top1_paired"] == pytest.approx(2 / 3)   # rows 0,1 right, row 2 wrong
    assert s["paired_items"] == 3
    assert s["both_directions_top1"] == pytest.approx(1 / 3)  # only row 0 is right both ways
    assert s["directional_items"] == 3
    none = score(EvalOutputs(probs, labels, np.arange(4), np.zeros((0, 3)), np.zeros(0, int), np.zeros(0, int)))
    assert none["reversed_top1"] is None and none["paired_items"] == 0
    assert none["both_directions_top1"] is None and none["directional_items"] == 0


def test_order_blind_model_scores_zero_both_ways_but_not_on_self_reversing_classes():
    # Partners 0<->1, class 2 is its own reversal ("stay"). An order-blind model predicts the same
    # class for a clip and its reversal, so it is never right both ways on 0/1, while class 2 is.
    labels = np.array([0, 1, 0, 2, 2])
    preds = np.array([0, 1, 1, 2, 2])
    probs = onehotish(list(preds), 3)
    reversal = {0: 1, 1: 0, 2: 2}
    out = EvalOutputs(probs, labels, np.arange(5), probs.copy(), np.array([reversal[int(y)] for y in labels]),
                      np.arange(5))
    s = score(out)
    assert s["both_directions_top1"] == 0.0
    assert s["directional_items"] == 3
    # reversed_top1 alone does not show it: the wrong forward answer on row 2 is right reversed, and
    # the self-reversing class is right both ways
    assert s["reversed_top1"] == pytest.approx(3 / 5)


def test_mean_class_accuracy_is_scikit_learns_balanced_accuracy_to_the_last_bit():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    for n, classes in ((7, 3), (240, 12), (1000, 50)):
        labels, preds = rng.integers(0, classes, n), rng.integers(0, classes + 2, n)  # some predicted, never true
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert M.mean_class_accuracy(labels, preds) == float(balanced_accuracy_score(labels, preds))
