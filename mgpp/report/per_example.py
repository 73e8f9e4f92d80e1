"""The report's per-example table: each comparison it prints, recomputed from the runs' per-example
predictions with a paired bootstrap over seeds and examples (:mod:`mgpp.report.paired`), with
p-values (raw and Holm-adjusted across every comparison of the report) and each difference as a
share of the headroom, dense − always-the-commonest-label."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..predictions import final_predictions, read_predictions
from .paired import WEIGHTED_METRICS, PairedResult, Scores, holm, paired_bootstrap
from .runs import Run
from .tables import Difference, _p, gap_changes, setting_text, signed

log = logging.getLogger(__name__)

__all__ = ["ExampleRow", "per_example_rows", "per_example_markdown", "adjust_all", "comparisons_csv",
           "all_comparisons"]


@dataclass
class ExampleRow:
    """``reference - other`` on one metric of one evaluation split, over seeds and examples."""

    experiment: str
    task: str
    split: str
    sparsity: float
    reference: str
    other: str
    setting: str
    metric: str
    result: PairedResult
    #: dense - always the commonest label, in the metric's units (NaN without dense runs that wrote predictions)
    headroom: float = math.nan
    p_holm: float = field(default=math.nan)

    @property
    def share(self) -> float:
        return self.result.estimate / self.headroom if self.headroom and not math.isnan(self.headroom) else math.nan


_cache: dict[Path, dict[str, Scores]] = {}


def run_scores(run: Run) -> dict[str, Scores]:
    """``{split: Scores}`` of a run's last evaluation of each split (empty without predictions)."""
    if run.path is None:
        return {}
    if run.path not in _cache:
        out = {}
        for split, path in final_predictions(run.path).items():
            try:
                data = read_predictions(path)
            except (OSError, ValueError) as err:
                log.warning("%s: predictions left out (%s)", path, err)
                continue
            out[split] = Scores(data["id"], data["label"], data["prediction"])
        _cache[run.path] = out
    return _cache[run.path]


def _constant_majority(scores: Scores, metric: str) -> float:
    """The metric of always predicting the split's commonest label."""
    labels = scores.label.astype(np.int64)
    majority = np.full_like(labels, np.bincount(labels).argmax())
    return float(WEIGHTED_METRICS[metric](labels, majority, np.ones((1, len(labels))))[0])


def _headroom(runs: Sequence[Run], experiment: str, task: str, split: str, metric: str) -> float:
    """metric(dense) - metric(always the commonest label), dense being the experiment and task's strongest
    dense reference: where dense runs of several settings ran (two recipes), the group with the highest
    mean over its seeds, so that no recipe's weaker runs dilute the reference."""
    from .tables import group_runs

    dense = [r for r in runs if r.finished and r.get("method.name") == "dense"
             and r.get("experiment_name", "default") == experiment and r.get("task.name") == task]
    references = []  # (mean over a group's seeds, the commonest label's score), one per dense setting
    for members in group_runs(dense).values():
        scores = [s for s in (run_scores(r).get(split) for r in members) if s is not None]
        if scores:
            ones = np.ones((1, len(scores[0].label)))
            mean = float(np.mean([WEIGHTED_METRICS[metric](s.label, s.prediction, ones)[0] for s in scores]))
            references.append((mean, _constant_majority(scores[0], metric)))
    if not references:
        return math.nan
    best, majority = max(references)
    return best - majority


def per_example_rows(diffs: Sequence[Difference], runs: Sequence[Run], replicates: int = 4000) -> list[ExampleRow]:
    """For each comparison of ``diffs`` whose runs all wrote predictions: a row per split they share
    and per metric with a per-example form (accuracy, F1)."""
    rows, seen = [], set()
    for d in diffs:
        identity = (d.experiment, d.task, d.sparsity, d.split, d.reference, d.other, d.other_split)
        if d.from_sparsity is not None or not d.pairs or identity in seen:
            continue
        seen.add(identity)
        sides = [(run_scores(a), run_scores(b)) for a, b in d.pairs]
        splits = set.intersection(*(set(a) & set(b) for a, b in sides))
        if not splits:
            continue
        names = [m for m in (d.pairs[0][0].get("task.metrics") or []) if m in WEIGHTED_METRICS]
        mine, theirs = setting_text(d.split), setting_text(d.other_split)
        setting = "; ".join(([mine] if mine else []) + ([f"{d.other} at {theirs}"] if theirs else []))
        for split in sorted(splits):
            for metric in names:
                try:
                    result = paired_bootstrap([a[split] for a, _ in sides], [b[split] for _, b in sides], metric,
                                              replicates=replicates)
                except ValueError as err:
                    log.warning("%s − %s, %s %s: not compared example by example (%s)", d.reference, d.other,
                                d.task, split, err)
                    continue
                rows.append(ExampleRow(d.experiment, d.task, split, d.sparsity, d.reference, d.other, setting, metric,
                                       result, _headroom(runs, d.experiment, d.task, split, metric)))
    return rows


def adjust_all(diffs: Sequence[Difference], changes: Sequence[Difference], examples: Sequence[ExampleRow]) -> None:
    """Holm-adjust every p-value the report prints, as one family (seed-paired differences, their
    changes with sparsity, per-example differences): sets each one's ``p_holm``."""
    family = [*diffs, *changes, *examples]
    pvalues = [x.result.p if isinstance(x, ExampleRow) else x.p for x in family]
    for item, adjusted in zip(family, holm(pvalues)):
        item.p_holm = adjusted


PER_EXAMPLE_NOTE = (
    "Each comparison again, from the runs' per-example predictions (`predictions/<split>/`): the mean over seeds "
    "of the difference, in percent points, with a 95% interval and a two-sided p-value from a paired bootstrap that "
    "resamples both the seeds (a seed's two runs stay together) and the examples (one reweighting shared by every "
    "run of a replicate) — so the evaluation set's own sampling error is in it, which the seed-paired t-intervals "
    "above leave out. p (Holm): adjusted across every comparison this report prints. Share of headroom: the "
    "difference over (dense − always predicting the commonest label), the distance a pruned model can lose; "
    "where dense runs of several recipes ran, the strongest of them.")


def per_example_markdown(rows: Sequence[ExampleRow]) -> str:
    out = []
    for experiment in dict.fromkeys(r.experiment for r in rows):
        out += [f"### {experiment}: per-example paired differences (bootstrap over seeds and examples)", "",
                "| task | split | sparsity | difference | metric | estimate [95% interval] | p (Holm) "
                "| share of headroom | seeds × examples |", "|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r.experiment == experiment):
            res = r.result
            setting = f" ({r.setting})" if r.setting else ""
            share = "n/a" if math.isnan(r.share) else f"{r.share:+.0%} of {100 * r.headroom:.1f}"
            out.append(f"| {r.task} | {r.split} | {r.sparsity:.0%} | {r.reference} − {r.other}{setting} | {r.metric} "
                       f"| {signed(100 * res.estimate)} [{signed(100 * res.low)}, {signed(100 * res.high)}] "
                       f"| {_p(res.p)} ({_p(r.p_holm) if not math.isnan(r.p_holm) else 'n/a'}) | {share} "
                       f"| {res.seeds} × {res.examples} |")
        out += ["", PER_EXAMPLE_NOTE, ""]
    return "\n".join(out)


def comparisons_csv(path: str | Path, diffs: Sequence[Difference], changes: Sequence[Difference],
                    examples: Sequence[ExampleRow]) -> None:
    """Every comparison of the report in long format, with its p-values: for a reader's own tests."""
    nan = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v  # noqa: E731
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["kind", "experiment", "task", "split", "from_sparsity", "sparsity", "reference", "other",
                      "setting", "metric", "estimate", "low", "high", "p", "p_holm", "seeds", "examples",
                      "share_of_headroom"])
        for kind, members in (("seed-paired", diffs), ("change with sparsity", changes)):
            for d in members:
                low, high = d.interval()
                setting = "; ".join(x for x in (setting_text(d.split), setting_text(d.other_split)) if x)
                out.writerow([kind, d.experiment, d.task, "", nan(d.from_sparsity), d.sparsity, d.reference, d.other,
                              setting, d.label, round(d.mean, 4), nan(round(low, 4)), nan(round(high, 4)),
                              nan(d.p), nan(d.p_holm), d.n, "", ""])
        for r in examples:
            res = r.result
            out.writerow(["per-example bootstrap", r.experiment, r.task, r.split, "", r.sparsity, r.reference, r.other,
                          r.setting, r.metric, round(100 * res.estimate, 4), round(100 * res.low, 4),
                          round(100 * res.high, 4), res.p, nan(r.p_holm), res.seeds, res.examples, nan(r.share)])


def all_comparisons(diffs: Sequence[Difference], runs: Sequence[Run], replicates: int = 4000):
    """``(changes, per-example rows)`` for ``diffs``, with every p-value Holm-adjusted as one family."""
    changes = gap_changes(diffs)
    examples = per_example_rows(diffs, runs, replicates)
    adjust_all(diffs, changes, examples)
    return changes, examples
