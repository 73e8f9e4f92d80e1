"""Paired statistics over seeds *and* examples, from the per-example predictions runs write
(``mgpp.predictions``), for the comparisons a report prints.

A difference between two methods on one evaluation split is uncertain for two reasons: the
seeds (another seed trains another model) and the examples (another draw of the split would score
differently; one MRPC dev example is 0.245 points). Pairing by seed alone, with a Student-t interval
over 3 seeds, ignores the second and can make a spread of a few examples look decisive.

:func:`paired_bootstrap` resamples both, keeping every pairing: each replicate draws the seeds with
replacement (method A's and B's run of a seed stay together) and one multinomial reweighting of the
examples, shared by every run of the replicate (both methods are scored on the same resampled
examples). The estimate is the mean over seeds of metric(A) − metric(B) on the split as it is; the
interval is the replicates' 2.5th and 97.5th percentiles; the two-sided p-value is the share of
replicates at least as far from the estimate as the estimate is from 0 (the bootstrap distribution
shifted to the null), with one added to both counts. :func:`holm` adjusts a family of p-values
(Holm-Bonferroni, controlling the family-wise error rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["WEIGHTED_METRICS", "Scores", "PairedResult", "paired_bootstrap", "holm", "student_t_p"]


def _accuracy(label: np.ndarray, prediction: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Accuracy under example weights ``w`` (replicates x examples): one value per replicate."""
    return (w * (label == prediction)).sum(-1) / w.sum(-1)


def _f1(label: np.ndarray, prediction: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Binary F1 of the positive class (1) under example weights, as GLUE reports it for MRPC and QQP."""
    tp = (w * ((prediction == 1) & (label == 1))).sum(-1)
    fp = (w * ((prediction == 1) & (label != 1))).sum(-1)
    fn = (w * ((prediction != 1) & (label == 1))).sum(-1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-12), 0.0)


#: metrics that a reweighting of the examples can recompute exactly (name -> f(label, prediction, w))
WEIGHTED_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": _accuracy, "f1": _f1}


@dataclass
class Scores:
    """One run's predictions on one split: ``label`` and ``prediction`` arrays in the order of ``ids``."""

    ids: np.ndarray
    label: np.ndarray
    prediction: np.ndarray


@dataclass
class PairedResult:
    """``A - B`` on one metric, in the metric's own units (fractions for accuracy and F1)."""

    estimate: float
    low: float
    high: float
    p: float
    seeds: int
    examples: int
    replicates: int


def paired_bootstrap(a: Sequence[Scores], b: Sequence[Scores], metric: str = "accuracy", replicates: int = 4000,
                     seed: int = 0, level: float = 0.95) -> PairedResult:
    """Paired bootstrap over seeds and examples of mean(metric(A_s)) - mean(metric(B_s)).

    ``a[i]`` and ``b[i]`` are the two methods' runs of the same seed; every run must hold the same
    examples (same ids), which are resampled together.
    """
    if metric not in WEIGHTED_METRICS:
        raise ValueError(f"no per-example form of metric {metric!r}; available: {sorted(WEIGHTED_METRICS)}")
    if not a or len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs the same number of seeds on both sides, got {len(a)} and {len(b)}")
    ids = a[0].ids
    for scores in (*a, *b):
        if scores.ids.shape != ids.shape or not np.array_equal(scores.ids, ids):
            raise ValueError("the runs hold predictions for different examples (ids differ): they cannot be paired "
                             "by example (another max_eval_samples or split?)")
    score = WEIGHTED_METRICS[metric]
    label = np.stack([s.label for s in a])  # seeds x examples (the labels are the split's: equal on both sides)
    pa, pb = np.stack([s.prediction for s in a]), np.stack([s.prediction for s in b])
    n_seeds, n = pa.shape
    ones = np.ones((1, n))
    per_seed = np.array([score(label[s], pa[s], ones)[0] - score(label[s], pb[s], ones)[0] for s in range(n_seeds)])
    estimate = float(per_seed.mean())
    rng = np.random.default_rng(seed)
    draws = np.empty(replicates)
    chunk = 500
    for start in range(0, replicates, chunk):
        m = min(chunk, replicates - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(np.float64)  # one example draw per replicate
        picks = rng.integers(0, n_seeds, size=(m, n_seeds))  # the seeds of each replicate, with replacement
        diff = np.stack([score(label[s], pa[s], w) - score(label[s], pb[s], w) for s in range(n_seeds)], axis=1)
        draws[start:start + m] = np.take_along_axis(diff, picks, axis=1).mean(1)
    alpha = 1 - level
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    far = int(np.sum(np.abs(draws - estimate) >= abs(estimate)))
    p = (far + 1) / (replicates + 1)
    return PairedResult(estimate, float(low), float(high), min(1.0, p), n_seeds, n, replicates)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order (NaN stays NaN and does not count)."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def student_t_p(values: Sequence[float]) -> float:
    """Two-sided p-value of a one-sample t-test of mean 0 (the seed-paired differences); NaN below 2
    values, and 0 or 1 for values without spread."""
    from scipy import stats

    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return math.nan
    if np.std(values) == 0:
        return 1.0 if np.mean(values) == 0 else 0.0
    return float(stats.ttest_1samp(values, 0.0).pvalue)
