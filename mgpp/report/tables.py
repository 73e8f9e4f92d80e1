"""Runs grouped into the paper's table layout: mean ± std over seeds, the paper's numbers beside.

A group is (experiment, task, method, sparsity, any ``--by`` keys); its seeds are averaged.
Metric values are shown in percent like the paper (SQuAD's EM/F1 already are).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .runs import Run

__all__ = ["Row", "metric_columns", "summarize", "to_markdown", "to_csv"]

GROUP_KEYS = ("task.name", "method.name", "sparsity")
#: the order methods appear in a table (others follow, alphabetically)
METHOD_ORDER = ("dense", "gmp", "l2", "pa", "mgpp")


def metric_columns(task: dict) -> list[tuple[str, str]]:
    """``(key in metrics.json, label)`` for every metric of a task config, split by split."""
    names = list(task.get("metrics") or [])
    splits = list(task.get("eval_splits") or [])
    if len(splits) > 1:
        return [(f"eval_{s}_{m}", f"{m} ({s})") for s in splits for m in names]
    return [(f"eval_{m}", m) for m in names]


def percent_scale(task: dict) -> float:
    """100 for metrics in [0, 1]; 1 for SQuAD, whose official EM/F1 are percentages already."""
    return 1.0 if "exact_match" in (task.get("metrics") or []) else 100.0


def _sparsity_key(value: Any) -> str:
    return f"{float(value):g}"


@dataclass
class Row:
    """One table cell group: a task, a method, a sparsity (and ``--by`` values), over its seeds."""

    experiment: str
    task: str
    method: str
    sparsity: float
    by: tuple[tuple[str, Any], ...]
    labels: list[str]
    means: list[float]
    stds: list[float]  # sample std over seeds; nan for a single seed
    seeds: list[int]
    achieved_sparsity: float
    wall_time_s: float
    paper: list[float] | None = None
    paper_table: str | None = None
    unfinished: int = 0

    @property
    def n(self) -> int:
        return len(self.seeds)

    def cell(self, digits: int = 1) -> str:
        parts = []
        for mean, std in zip(self.means, self.stds):
            parts.append(f"{mean:.{digits}f}" + ("" if math.isnan(std) else f"±{std:.{digits}f}"))
        return "/".join(parts)

    def paper_cell(self) -> str:
        return "/".join(f"{v:g}" for v in self.paper) if self.paper else ""


def _paper_numbers(run: Run, task: str, method: str, sparsity: float) -> list[float] | None:
    results = (run.get("paper.results") or {}).get(task) or {}
    by_sparsity = results.get(method) or {}
    for key, values in by_sparsity.items():
        if _sparsity_key(key) == _sparsity_key(sparsity):
            return [float(v) for v in (values if isinstance(values, list) else [values])]
    return None


def summarize(runs: Sequence[Run], by: Sequence[str] = ()) -> list[Row]:
    """Group finished runs; unfinished ones are counted per group but not averaged."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        key = (run.get("experiment_name", "default"), *(run.get(k) for k in GROUP_KEYS),
               tuple((k, run.get(k)) for k in by))
        groups[key].append(run)
    rows = []
    for (experiment, task, method, sparsity, by_values), members in groups.items():
        done = [r for r in members if r.finished]
        if not done:
            continue
        task_cfg = done[0].config.get("task") or {}
        columns, scale = metric_columns(task_cfg), percent_scale(task_cfg)
        means, stds = [], []
        for key, _ in columns:
            values = [scale * float(r.metrics[key]) for r in done if key in r.metrics]
            means.append(statistics.fmean(values) if values else math.nan)
            stds.append(statistics.stdev(values) if len(values) > 1 else math.nan)
        dense = method == "dense"
        rows.append(Row(
            experiment=experiment, task=task, method=method, sparsity=0.0 if dense else float(sparsity),
            by=by_values, labels=[label for _, label in columns], means=means, stds=stds,
            seeds=sorted(int(r.get("seed", 0)) for r in done),
            achieved_sparsity=statistics.fmean(float(r.metrics.get("sparsity", 0.0)) for r in done),
            wall_time_s=statistics.fmean(float(r.metrics.get("wall_time_s", math.nan)) for r in done),
            paper=_paper_numbers(done[0], task, method, 0.0 if dense else sparsity),
            paper_table=done[0].get("paper.table"), unfinished=len(members) - len(done),
        ))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r.experiment, r.sparsity, order.get(r.method, len(order)), r.method, str(r.by), r.task))
    return rows


def _method_label(row: Row) -> str:
    extra = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in row.by)
    return f"{row.method} ({extra})" if extra else row.method


def to_markdown(rows: Sequence[Row]) -> str:
    """One table per experiment: a row per (sparsity, method), a column per task; cells are
    ``mean±std`` over seeds (metrics joined by ``/``); a ``paper`` row follows where the
    experiment file carries the paper's numbers."""
    out = []
    for experiment in dict.fromkeys(r.experiment for r in rows):
        mine = [r for r in rows if r.experiment == experiment]
        tasks = list(dict.fromkeys(r.task for r in mine))
        table = next((r.paper_table for r in mine if r.paper_table), None)
        out.append(f"## {experiment}" + (f" (paper {table})" if table else ""))
        out.append("")
        header = ["sparsity", "method", *[f"{t} ({'/'.join(next(r.labels for r in mine if r.task == t))})"
                                          for t in tasks], "seeds"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        lines = dict.fromkeys((r.sparsity, _method_label(r), r.method) for r in mine)
        for sparsity, label, method in lines:
            cells = {r.task: r for r in mine if r.sparsity == sparsity and _method_label(r) == label}
            seeds = sorted({r.n for r in cells.values()})
            ours = [cells[t].cell() if t in cells else "" for t in tasks]
            out.append(f"| {sparsity:.0%} | {label} | " + " | ".join(ours) + f" | {'/'.join(map(str, seeds))} |")
            if any(c.paper for c in cells.values()):
                paper = [cells[t].paper_cell() if t in cells else "" for t in tasks]
                out.append(f"| {sparsity:.0%} | {method} (paper) | " + " | ".join(paper) + " | |")
        unfinished = sum(r.unfinished for r in mine)
        out.append("")
        out.append("Cells: mean±std over seeds (sample std; none for one seed), in percent; metrics in the "
                   "order of the column header." + (f" {unfinished} unfinished runs not counted." if unfinished else ""))
        out.append("")
    return "\n".join(out)


def to_csv(rows: Sequence[Row], path: str | Path) -> None:
    """Long format: one line per (group, metric), with the paper's number when there is one."""
    by_keys = list(dict.fromkeys(k for r in rows for k, _ in r.by))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "task", "method", "sparsity", *by_keys, "metric", "mean", "std", "n", "seeds",
                    "paper", "achieved_sparsity", "wall_time_s"])
        for r in rows:
            by = dict(r.by)
            for i, label in enumerate(r.labels):
                paper = r.paper[i] if r.paper and i < len(r.paper) else ""
                w.writerow([r.experiment, r.task, r.method, r.sparsity, *[by.get(k, "") for k in by_keys], label,
                            _num(r.means[i]), _num(r.stds[i]), r.n, " ".join(map(str, r.seeds)), paper,
                            _num(r.achieved_sparsity, 6), _num(r.wall_time_s, 1)])


def _num(value: float, digits: int = 4) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"
