"""Report helpers: a pre-trained model against its control, task by task."""

from __future__ import annotations

import pytest

from musicssl.evaluate.probe_protocol import TaskResult
from musicssl.evaluate.report import compare


def result(model: str, task: str, metric: str, value: float) -> TaskResult:
    return TaskResult(task=task, model=model, monitor=metric, runs=[], layer=0, learning_rate=1e-3,
                      valid={metric: value}, test={metric: value}, test_std={})


def test_compare_counts_wins_ties_at_table_rounding_and_losses():
    results = [result("A", "gtzan", "accuracy", 0.600), result("B", "gtzan", "accuracy", 0.500),
               result("A", "nsynth_pitch", "accuracy", 0.25004), result("B", "nsynth_pitch", "accuracy", 0.24996),
               result("A", "emo", "r2_arousal", 0.10), result("B", "emo", "r2_arousal", 0.30),
               result("B", "mtt", "roc_auc", 0.9)]  # only the control has MTT: not compared
    comparison = compare(results, "A", "B")  # NSynth pitch: 25.0 in both rows of the table, a tie
    assert (comparison.wins, comparison.ties, comparison.losses) == (["gtzan"], ["nsynth_pitch"], ["emo"])
    assert comparison.average_gain == pytest.approx((10.0 + 0.008 - 20.0) / 3)
    assert comparison.line() == "A vs B: higher on 1 of 3 tasks, 1 tied, average -3.33; lower on emo"
