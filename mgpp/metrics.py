"""Task metrics as the paper reports them, with scikit-learn and scipy (``evaluate`` needs the hub).

``accuracy`` (MNLI m/mm, QNLI, RTE, SST-2, WNLI), ``f1`` (MRPC, QQP; positive class 1),
``matthews_correlation`` (CoLA), ``pearson`` and ``spearmanr`` (STS-B).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["METRICS", "compute", "for_task", "prediction_spread", "rouge", "collapse_reason", "recorded_chance"]


def _labels(predictions: np.ndarray) -> np.ndarray:
    predictions = np.asarray(predictions)
    return predictions.argmax(-1) if predictions.ndim > 1 else predictions


def _scores(predictions: np.ndarray) -> np.ndarray:
    return np.asarray(predictions, dtype=np.float64).reshape(-1)


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score  # scikit-learn and scipy load in ~1 s: only when evaluating

    return float(accuracy_score(y, _labels(p)))


def _f1(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, _labels(p)))


def _matthews(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(y, _labels(p)))


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(_scores(p), np.asarray(y, dtype=np.float64))[0])


def _spearman(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(_scores(p), np.asarray(y, dtype=np.float64))[0])


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy, "f1": _f1, "matthews_correlation": _matthews, "pearson": _pearson, "spearmanr": _spearman}


def _check_known(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {sorted(METRICS)}")


def compute(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{name: value}`` for each metric; logits (n, classes) or regression scores (n,) or (n, 1)."""
    _check_known(names)
    return {name: METRICS[name](predictions, labels) for name in names}


def prediction_spread(predictions: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """How varied the predictions are, to tell a collapsed model (one class, a constant score).

    Classification: ``majority_prediction_fraction``, the share of the most frequent predicted
    class (1.0: a single class for every example), and with ``labels`` ``majority_label_fraction``,
    the share of the most frequent label: the accuracy of always predicting it, the chance level a
    model must beat. Regression: ``prediction_std``.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim > 1 and predictions.shape[-1] > 1:
        counts = np.bincount(predictions.argmax(-1).reshape(-1), minlength=predictions.shape[-1])
        spread = {"majority_prediction_fraction": float(counts.max() / max(counts.sum(), 1))}
        labels = None if labels is None else np.asarray(labels)
        if labels is not None and labels.ndim == 1:  # class ids; ignored positions (-100) left out
            kept = labels[labels >= 0].astype(np.int64)
            if kept.size:
                spread["majority_label_fraction"] = float(np.bincount(kept).max() / kept.size)
        return spread
    return {"prediction_std": float(np.std(_scores(predictions)))}


#: a classifier whose most frequent predicted class covers this share of the dev set, or a regressor
#: whose predictions spread less than this (label units), has collapsed
COLLAPSED_FRACTION, COLLAPSED_STD = 0.99, 0.01
#: so has a classifier whose accuracy is within this of always predicting the commonest dev label
CHANCE_MARGIN = 0.01
LABEL_MAJORITY = "majority_label_fraction"


def recorded_chance(metrics: dict) -> dict[str, float]:
    """``{metric prefix ("eval_"): share of the commonest dev label}`` as a run recorded it."""
    return {k[: -len(LABEL_MAJORITY)]: float(v) for k, v in metrics.items() if k.endswith(LABEL_MAJORITY)}


def collapse_reason(metrics: dict, chance: dict[str, float] | None = None) -> str | None:
    """Why a model's evaluation says it has collapsed, or None: it predicts (nearly) one class or a
    constant score, or its accuracy is within ``CHANCE_MARGIN`` of always predicting the commonest label
    (``chance``: ``{metric prefix: that share}``; default: what ``metrics`` recorded). The rule the
    report marks runs by, and the console's last line."""
    chance = chance if chance is not None else recorded_chance(metrics)
    for key, value in metrics.items():
        if key.endswith("majority_prediction_fraction") and value >= COLLAPSED_FRACTION:
            return f"{value:.0%} of its predictions are one class"
        if key.endswith("prediction_std") and value < COLLAPSED_STD:
            return f"its predictions spread by {value:.2g} only"
    for prefix, level in chance.items():
        accuracy = metrics.get(prefix + "accuracy")
        if accuracy is not None and accuracy <= level + CHANCE_MARGIN:
            return f"accuracy {accuracy:.4f} is the commonest label's share ({level:.4f})"
    return None


def for_task(names: Sequence[str]) -> Callable:
    """A ``compute_metrics`` function for the Hugging Face ``Trainer``: the task's metrics, plus
    :func:`prediction_spread` (so that a report can mark collapsed runs)."""
    _check_known(names)  # at construction, before any training

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        return compute(names, predictions, labels) | prediction_spread(predictions, labels)

    return compute_metrics


def _sentences_per_line(text: str) -> str:
    """Sentences on separate lines, as ROUGE-Lsum expects (a regex split: no tokenizer data needed)."""
    import re

    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures in percent (``rouge-score``, Porter stemming), averaged."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(_sentences_per_line(reference), _sentences_per_line(prediction))
        for key in totals:
            totals[key] += scores[key].fmeasure
    n = max(len(predictions), 1)
    return {key: 100.0 * value / n for key, value in totals.items()}
