"""Task metrics as the paper reports them, with scikit-learn and scipy (``evaluate`` needs the hub).

``accuracy`` (MNLI m/mm, QNLI, RTE, SST-2, WNLI), ``f1`` (MRPC, QQP; positive class 1),
``matthews_correlation`` (CoLA), ``pearson`` and ``spearmanr`` (STS-B).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

__all__ = ["METRICS", "compute", "for_task"]


def _labels(predictions: np.ndarray) -> np.ndarray:
    predictions = np.asarray(predictions)
    return predictions.argmax(-1) if predictions.ndim > 1 else predictions


def _scores(predictions: np.ndarray) -> np.ndarray:
    return np.asarray(predictions, dtype=np.float64).reshape(-1)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: float(accuracy_score(y, _labels(p))),
    "f1": lambda p, y: float(f1_score(y, _labels(p))),
    "matthews_correlation": lambda p, y: float(matthews_corrcoef(y, _labels(p))),
    "pearson": lambda p, y: float(pearsonr(_scores(p), np.asarray(y, dtype=np.float64))[0]),
    "spearmanr": lambda p, y: float(spearmanr(_scores(p), np.asarray(y, dtype=np.float64))[0]),
}


def compute(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{name: value}`` for each metric; logits (n, classes) or regression scores (n,) or (n, 1)."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {sorted(METRICS)}")
    return {name: METRICS[name](predictions, labels) for name in names}


def for_task(names: Sequence[str]) -> Callable:
    """A ``compute_metrics`` function for the Hugging Face ``Trainer``."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {sorted(METRICS)}")

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        return compute(names, predictions, labels)

    return compute_metrics
