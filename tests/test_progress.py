"""Progress in log files: plain lines every few steps (no carriage returns), and the evaluation's accuracies."""
from __future__ import annotations

import io
import math
import re

import pytest
import torch

from amflow.progress import bar
from standins_train import make_tiny_dataset, tiny_params

torch.set_num_threads(1)


def test_a_bar_in_a_log_is_a_line_every_tenth_and_the_final_count():
    log = io.StringIO()  # not a TTY, like a redirected stderr
    b = bar(total=37, desc="epoch 1/4", unit="step", file=log)
    for _ in range(37):
        b.update(1)
    b.close()
    text = log.getvalue()
    assert "\r" not in text
    counts = [int(m) for m in re.findall(r"^epoch 1/4: (\d+)/37 ", text, flags=re.M)]
    step = math.ceil(37 / 10)
    assert counts == [*range(0, 37, step), 37]  # 0, 4, ..., 36, then the final count once
    assert len(text.splitlines()) == len(counts)


def test_a_bar_over_an_iterable_of_unknown_length_writes_no_carriage_return():
    log = io.StringIO()
    assert sum(bar((i for i in range(5)), desc="camera motion", file=log)) == 10
    assert "\r" not in log.getvalue() and log.getvalue().startswith("camera motion: ")


def test_training_and_evaluation_logs_are_lines_and_evaluation_prints_its_accuracies(tmp_path, monkeypatch, capsys):
    from amflow.evaluate.evaluation import evaluate_run
    from amflow.train.training import train_run

    monkeypatch.setenv("AMFLOW_TRACKING", "0")
    make_tiny_dataset(tmp_path / "data")
    params = tiny_params(epochs=1)
    kw = dict(dataset="tiny", method="frame", seed=0, data_dir=tmp_path / "data", results_dir=tmp_path / "results")
    train_run(params, **kw)
    metrics = evaluate_run(params, **kw)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.search(r"^epoch 1/1: \d+/\d+ \(100%\)", err, flags=re.M), err
    assert re.search(r"^evaluate: \d+/\d+ \(100%\)", err, flags=re.M), err
    expected = (f"top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}%, "
                f"mean class accuracy {100 * metrics['mean_class_acc']:.2f}%")
    assert expected in err, err
    assert metrics["top5"] == pytest.approx(1.0)  # 4 classes: every label is in the top 5
