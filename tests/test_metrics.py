"""Metric functions against values worked out by hand."""

import math

import numpy as np
import pytest

from mgpp.metrics import compute, for_task


def test_accuracy_and_f1_from_logits():
    logits = np.array([[2.0, 1.0], [0.1, 0.9], [0.3, 0.2], [0.0, 5.0], [1.0, 0.0]])  # predicts 0,1,0,1,0
    labels = np.array([0, 1, 1, 1, 1])
    got = compute(["accuracy", "f1"], logits, labels)
    assert got["accuracy"] == pytest.approx(3 / 5)
    # positives: tp=2 (rows 1,3), fp=0, fn=2 (rows 2,4): precision 1, recall 1/2 -> F1 = 2/3
    assert got["f1"] == pytest.approx(2 / 3)


def test_matthews_correlation():
    preds = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 0, 1, 1])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # = 1/3
    assert compute(["matthews_correlation"], preds, labels)["matthews_correlation"] == pytest.approx(expected)
    assert expected == pytest.approx(1 / 3)


def test_pearson_and_spearman_for_regression():
    scores = np.array([[1.0], [2.0], [3.0], [4.0]])
    labels = np.array([1.0, 3.0, 2.0, 4.0])
    got = compute(["pearson", "spearmanr"], scores, labels)
    # mean 2.5 both; deviations x=(-1.5,-.5,.5,1.5), y=(-1.5,.5,-.5,1.5): sum xy = 4, sum x^2 = sum y^2 = 5
    assert got["pearson"] == pytest.approx(4 / 5)
    # ranks equal the values here: Spearman = Pearson of ranks = 0.8
    assert got["spearmanr"] == pytest.approx(0.8)


def test_for_task_reads_eval_prediction_and_rejects_unknown_metrics():
    class EvalPrediction:
        predictions = (np.array([[0.0, 1.0], [1.0, 0.0]]),)  # tuple, as some models return
        label_ids = np.array([1, 1])

    assert for_task(["accuracy"])(EvalPrediction()) == {"accuracy": 0.5, "majority_prediction_fraction": 0.5,
                                                         "majority_label_fraction": 1.0}
    with pytest.raises(ValueError, match="acuracy"):
        for_task(["acuracy"])


def test_prediction_spread_tells_a_collapsed_model():
    from mgpp.metrics import prediction_spread

    one_class = np.array([[2.0, 0.1], [1.5, -1.0], [0.3, 0.2], [9.0, 1.0]])
    assert prediction_spread(one_class) == {"majority_prediction_fraction": 1.0}
    assert prediction_spread(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])) == {
        "majority_prediction_fraction": 0.5}
    assert prediction_spread(np.array([[2.5], [2.5], [2.5]])) == {"prediction_std": 0.0}
    assert prediction_spread(np.array([1.0, 3.0]))["prediction_std"] == pytest.approx(1.0)
    # with the labels: the commonest label's share, the accuracy of always predicting it (MRPC dev: 68.4%)
    assert prediction_spread(one_class, np.array([1, 1, 0, 1]))["majority_label_fraction"] == 0.75
