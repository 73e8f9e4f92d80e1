"""Runs grouped into the paper's table layout: mean ± std over seeds, the paper's numbers beside.

A group is (experiment, task, method, sparsity, any ``--by`` keys, where ``a|b`` reads ``b`` for a
run whose config lacks ``a``); its seeds are averaged.
Metric values are shown in percent like the paper (SQuAD's EM/F1 already are). The paper's
cells come from the experiment files' ``paper`` blocks, including the baselines only the
paper ran (MvP, ITP, LoSparse, Lead-3), which get paper-only rows.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..metrics import CHANCE_MARGIN, COLLAPSED_FRACTION, COLLAPSED_STD, collapse_reason, recorded_chance  # noqa: F401
from ..run_folder import LOG_MAGNITUDE_HISTOGRAM
from .runs import Run

log = logging.getLogger(__name__)

__all__ = ["Row", "PaperCell", "Difference", "Unpaired", "KeptWeights", "by_label", "by_value", "cells_from_runs",
           "compare", "differences", "differences_markdown", "group_label", "is_collapsed", "kept_weights",
           "kept_weights_markdown", "load_experiment_paper", "method_rank", "metric_columns", "paper_cells",
           "share_below", "signed", "summarize", "table_split_keys", "to_csv", "to_markdown", "unpaired_lines"]

GROUP_KEYS = ("task.name", "method.name")
#: config keys that may differ between the seeds of one cell; any other key that differs splits it
SEED_KEYS = ("seed", "output_dir", "resume", "logger", "trainer.disable_tqdm", "data_dir", "hydra", "sparsity",
             "schedule.final_sparsity", "recipe", "paper")
#: the order methods appear in a table (others follow, alphabetically): the paper's references and
#: baselines first (Lead-3, dense, MvP, ITP, LoSparse), then ours, MGPP last as in the paper
METHOD_ORDER = ("lead3", "dense", "mvp", "itp", "losparse", "gmp", "l2", "pa", "mgpp")
#: how the paper writes "non-convergence of the model" (Table 1); kept as such, never a number
NOT_CONVERGED = "N.A."


def metric_columns(task: dict) -> list[tuple[str, str]]:
    """``(key in metrics.json, label)`` for every metric of a task config, split by split."""
    names = list(task.get("metrics") or [])
    splits = list(task.get("eval_splits") or [])
    if len(splits) > 1:
        return [(f"eval_{s}_{m}", f"{m} ({s})") for s in splits for m in names]
    return [(f"eval_{m}", m) for m in names]


def percent_scale(task: dict) -> float:
    """What the task's metric values are multiplied by to read in percent: its class's ``metric_scale``
    (GLUE 100; SQuAD, ROUGE, MLM loss/perplexity 1)."""
    target = task.get("_target_")
    if target:
        try:
            from hydra.utils import get_class

            return float(get_class(target).metric_scale)
        except Exception:  # a class this installation lacks: fall back on the metric names
            pass
    percent_already = {"exact_match", "rouge1", "rouge2", "rougeLsum", "loss", "perplexity"}
    return 1.0 if percent_already & set(task.get("metrics") or []) else 100.0


def target_sparsity(run: Run) -> float:
    """The sparsity a run aimed at, as it wrote it (dense: 0, whatever its config's ``sparsity`` said)."""
    if run.metrics and "target_sparsity" in run.metrics:
        return float(run.metrics["target_sparsity"])
    return 0.0 if run.get("method.name") == "dense" else float(run.get("sparsity", 0.0))


def _split_keys(members: Sequence[Run]) -> list[str]:
    """Config keys (other than :data:`SEED_KEYS`) whose values differ between ``members``."""
    from ..run_folder import flatten, portable

    flats = [{k: portable(v) for k, v in flatten(r.config).items()} for r in members]
    shared = set.intersection(*(set(f) for f in flats)) if flats else set()  # keys a version lacks do not split
    seed_key = lambda k: any(k == s or k.startswith(s + ".") for s in SEED_KEYS)  # noqa: E731
    return sorted(k for k in shared if not seed_key(k) and len({repr(f[k]) for f in flats}) > 1)


def group_runs(runs: Sequence[Run], by: Sequence[str] = ()) -> dict[tuple, list[Run]]:
    """``{(experiment, task, method, target sparsity, by): runs}``: the seeds of one cell.

    ``by`` holds the ``--by`` keys (see :func:`by_value`) and, on top, the keys of
    :func:`table_split_keys` (another model, learning rate, prior ...): such runs are never averaged as
    seeds, and every row of their table names its value, so that no row is left unlabelled beside
    rows that name theirs.
    """
    return {key: _one_per_seed(key, members) for key, members in _cells(runs, by).items()}


def _cells(runs: Sequence[Run], by: Sequence[str] = ()) -> dict[tuple, list[Run]]:
    """:func:`group_runs` before one run per seed is chosen."""
    from ..run_folder import flatten

    first: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        first[(run.get("experiment_name", "default"), *(run.get(k) for k in GROUP_KEYS), target_sparsity(run),
               tuple((by_label(k), _hashable(by_value(run, k))) for k in by))].append(run)
    split = table_split_keys(first, by)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for (experiment, *cell, by_values), members in first.items():
        for run in members:
            flat = flatten(run.config)
            extra = tuple((k, _hashable(_split_value(run, k, flat))) for k in split[experiment])
            groups[(experiment, *cell, by_values + extra)].append(run)
    return groups


#: config keys that say what was trained rather than how: a table whose runs hold several values of
#: one names it in every row, even where no cell mixes them (GMP of one model beside MGPP of another)
IDENTITY_KEYS = ("model.name",)


def table_split_keys(cells: dict[tuple, list[Run]], by: Sequence[str] = ()) -> dict[str, list[str]]:
    """Per experiment (one table), the keys besides ``by`` that keep its runs apart: every key that
    differs between the runs of one of its cells (``{(experiment, ...): runs}``), and the
    :data:`IDENTITY_KEYS` that differ anywhere in it. Kept per table rather than per cell, so that a
    cell whose runs agree is labelled as well: a row without its model beside rows with theirs reads
    as if it were both, and a difference needs both sides labelled alike to pair them."""
    named = {alternative for key in by for alternative in key.split("|")}
    keys: dict[str, set[str]] = defaultdict(set)
    members: dict[str, list[Run]] = defaultdict(list)
    for (experiment, *_), runs in cells.items():
        keys[experiment] |= set(_split_keys(runs))
        members[experiment] += runs
    for experiment, runs in members.items():
        keys[experiment] |= {k for k in IDENTITY_KEYS if len({repr(r.get(k)) for r in runs} - {"None"}) > 1}
    return {experiment: sorted(k for k in found if k not in named) for experiment, found in keys.items()}


def _split_value(run: Run, key: str, flat: dict[str, Any]) -> Any:
    """A split key's value for ``run`` (``flat``: its flattened config), as its table shows it; None (not
    shown) for a knob the run's prior and schedule do not read, as for ``--by`` keys (:func:`by_value`)."""
    from ..run_folder import portable

    return portable(flat.get(key)) if _reads_knob(run, key.split(".")[-1]) else None


def by_value(run: Run, key: str) -> Any:
    """A ``--by`` key's value for ``run``. ``a|b`` names alternatives, the first one a run's config
    sets (not null) wins: ``sigma1_sq|prior.sigma1_sq`` reads runs from before and after a key moved.
    A knob the run's prior and schedule do not read is None (GMP's sigma0_sq, L2's lam): it says
    nothing about the run, so it neither labels nor splits it."""
    for alternative in key.split("|"):
        value = run.get(alternative)
        if value is not None:
            return value if _reads_knob(run, alternative.split(".")[-1]) else None
    return None


def _reads_knob(run: Run, name: str) -> bool:
    """Whether ``run``'s prior or schedule reads the top-level knob ``name`` (any other key: True)."""
    from ..methods import KNOBS, knobs_read

    if name not in KNOBS:
        return True
    read = [knobs_read(str(run.get(f"{part}._target_"))) for part in ("prior", "schedule")]
    return any(r is None or name in r for r in read)


def by_label(key: str) -> str:
    """How a ``--by`` key is shown: its first alternative."""
    return key.split("|")[0]


def _hashable(value):
    return repr(value) if isinstance(value, (list, dict)) else value


def _by_seed(members: list[Run]) -> tuple[dict, list[tuple[Run, Run]]]:
    """``({seed: the run counted}, [(a run left out, the run counted for its seed)])``: a finished run
    before an unfinished one, then the first by path."""
    by_seed: dict = {}
    dropped = []
    for run in sorted(members, key=lambda r: (not r.finished, str(r.path))):
        kept = by_seed.setdefault(run.get("seed"), run)
        if kept is not run:
            dropped.append((run, kept))
    return by_seed, dropped


def _one_per_seed(key, members: list[Run]) -> list[Run]:
    """One run per seed: runs that differ only in keys that do not matter to them (a dense run swept
    over sparsities) are the same experiment, and counting each would overstate n. The runs left out
    are listed by :func:`seed_duplicates` (the report names them)."""
    by_seed, _ = _by_seed(members)
    if len(by_seed) < len(members):
        log.warning("%s: %d runs share seeds; one run per seed is counted (the report names the others under "
                    "'Runs left out')", key[:4], len(members))
    return list(by_seed.values())


def seed_duplicates(runs: Sequence[Run], by: Sequence[str] = ()) -> list[tuple[Run, Run]]:
    """``(run left out, run counted instead)`` for each run the tables leave out because another run of
    the same cell has its seed (:func:`group_runs`)."""
    return [pair for members in _cells(runs, by).values() for pair in _by_seed(members)[1]]


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
    paper: list[float | None] | None = None  # None: the paper's N.A.
    paper_table: str | None = None
    unfinished: int = 0
    collapsed: int = 0  # seeds whose model predicts (nearly) one class / a constant: see is_collapsed
    @property
    def n(self) -> int:
        return len(self.seeds)

    def cell(self, digits: int = 1) -> str:
        parts = []
        for mean, std in zip(self.means, self.stds):
            parts.append(f"{mean:.{digits}f}" + ("" if math.isnan(std) else f"±{std:.{digits}f}"))
        return "/".join(parts) + (f" ({self.collapsed}/{self.n} collapsed)" if self.collapsed else "")

    def paper_cell(self) -> str:
        return _paper_text(self.paper) if self.paper else ""


def _paper_text(values: Sequence[float | None], digits: int = 1) -> str:
    return "/".join(NOT_CONVERGED if v is None else f"{v:.{digits}f}" for v in values)


def _paper_value(value: Any) -> float | None:
    if isinstance(value, str) and value.strip() == NOT_CONVERGED:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a paper cell holds numbers or {NOT_CONVERGED!r}, got {value!r}")
    return float(value)


@dataclass
class PaperCell:
    """One cell of a paper table, as an experiment file's ``paper.results`` gives it."""

    experiment: str
    task: str
    method: str
    sparsity: float
    values: list[float | None]  # percent; None: N.A. (did not converge)
    labels: list[str]
    table: str | None = None
    digits: int = 1  # decimals the paper prints (Table 4: 2)


def paper_cells(experiment: str, block: dict | None) -> list[PaperCell]:
    """Every cell of an experiment file's ``paper`` block (``results: task -> method -> sparsity -> values``)."""
    if not block:
        return []
    labels = block.get("metrics") or {}
    cells = []
    for task, by_method in (block.get("results") or {}).items():
        for method, by_sparsity in (by_method or {}).items():
            for sparsity, values in (by_sparsity or {}).items():
                values = values if isinstance(values, list) else [values]
                cells.append(PaperCell(experiment, task, method, float(sparsity), [_paper_value(v) for v in values],
                                       list(labels.get(task) or []), block.get("table"),
                                       int(block.get("digits", 1))))
    return cells


def load_experiment_paper(path: str | Path) -> list[PaperCell]:
    """The paper cells of an experiment file (``experiments/<name>.yaml``), without composing it."""
    import yaml

    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    return paper_cells(doc.get("experiment_name") or Path(path).stem, doc.get("paper"))


def cells_from_runs(runs: Sequence[Run]) -> list[PaperCell]:
    """The paper cells carried by the runs' configs, one block per experiment."""
    seen, cells = set(), []
    for run in runs:
        experiment = run.get("experiment_name", "default")
        if experiment not in seen and run.get("paper"):
            seen.add(experiment)
            cells += paper_cells(experiment, run.get("paper"))
    return cells


def _paper_numbers(cells: Sequence[PaperCell], experiment: str, task: str, method: str,
                   sparsity: float) -> list[float | None] | None:
    for c in cells:
        if (c.experiment, c.task, c.method, _sparsity_key(c.sparsity)) == (experiment, task, method,
                                                                           _sparsity_key(sparsity)):
            return c.values
    return None


# The collapse rule lives with the metrics (the console's last line uses it too).
_recorded_chance = recorded_chance


def chance_levels(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """Per task, ``{metric prefix: share of the commonest dev label}`` from the runs that recorded it
    (``mgpp.metrics.prediction_spread``); the dev set is the same for every run of a task, so runs
    made before the key existed are judged by their task's."""
    levels: dict[str, dict[str, float]] = defaultdict(dict)
    for run in runs:
        if run.finished:
            levels[run.get("task.name")] |= _recorded_chance(run.metrics)
    return {task: level for task, level in levels.items() if level}


def is_collapsed(metrics: dict, chance: dict[str, float] | None = None) -> bool:
    """Whether a finished run's model predicts (nearly) a single class or a constant score, or is no
    better than chance (``mgpp.metrics.collapse_reason``: the rule the console's last line applies).

    ``chance``: :func:`chance_levels` of the run's task (default: the run's own record); runs
    without a prediction spread or a chance level are never marked.
    """
    return collapse_reason(metrics, chance) is not None


def summarize(runs: Sequence[Run], by: Sequence[str] = (), paper: Sequence[PaperCell] | None = None) -> list[Row]:
    """Group finished runs; unfinished ones are counted per group but not averaged.

    ``paper``: the paper's cells to put beside each row (default: those the runs' configs carry).
    """
    paper = cells_from_runs(runs) if paper is None else paper
    groups = group_runs(runs, by)
    chance = chance_levels(runs)
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
        rows.append(Row(
            experiment=experiment, task=task, method=method, sparsity=float(sparsity),
            by=by_values, labels=[label for _, label in columns], means=means, stds=stds,
            seeds=sorted(int(r.get("seed", 0)) for r in done),
            achieved_sparsity=statistics.fmean(float(r.metrics.get("sparsity", 0.0)) for r in done),
            wall_time_s=statistics.fmean(float(r.metrics.get("wall_time_s", math.nan)) for r in done),
            paper=_paper_numbers(paper, experiment, task, method, sparsity),
            paper_table=done[0].get("paper.table"), unfinished=len(members) - len(done),
            collapsed=sum(is_collapsed(r.metrics, chance.get(task)) for r in done),
        ))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r.experiment, r.sparsity, order.get(r.method, len(order)), r.method, str(r.by), r.task))
    return rows


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (nan for fewer than two)."""
    if len(values) < 2:
        return math.nan, math.nan
    from scipy.stats import t

    mean = statistics.fmean(values)
    half = t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


@dataclass
class Difference:
    """``reference - other`` on one metric of one task and sparsity, paired by seed. With
    ``from_sparsity`` set it is instead how that difference changed from ``from_sparsity`` to
    ``sparsity``, per seed (the paper's claim that MGPP's lead grows with sparsity)."""

    experiment: str
    task: str
    sparsity: float
    reference: str
    other: str
    label: str
    diffs: list[float]  # per seed, percent points
    seeds: list[int] = field(default_factory=list)
    from_sparsity: float | None = None
    split: tuple = ()  # ((key, value), ...) of the keys that keep runs apart (``--by``, differing configs)
    other_split: tuple = ()  # where ``other`` stood in from another setting: its own values of the keys that differ
    #: per seed, the two runs compared ``(reference's, other's)``: their per-example predictions
    pairs: tuple = field(default=(), repr=False, compare=False)
    #: the Holm-adjusted p-value across every comparison of the report (set by the report)
    p_holm: float = field(default=math.nan, compare=False)

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Student-t interval for the mean paired difference (nan for fewer than two seeds)."""
        return t_interval(self.diffs, level)

    @property
    def p(self) -> float:
        """Two-sided p-value of the seed-paired t-test (NaN for a single seed)."""
        from .paired import student_t_p

        return student_t_p(self.diffs)

    def text(self, digits: int = 1) -> str:
        low, high = self.interval()
        band = "" if math.isnan(low) else f" [{signed(low, digits)}, {signed(high, digits)}]"
        return f"{signed(self.mean, digits)}{band}{p_text(self.p, self.p_holm)}"


def p_text(p: float, p_holm: float = math.nan) -> str:
    """`` p 0.041 (Holm 0.33)``; empty where there is no p-value."""
    if math.isnan(p):
        return ""
    holm = "" if math.isnan(p_holm) else f" (Holm {_p(p_holm)})"
    return f" p {_p(p)}{holm}"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def signed(value: float, digits: int = 1) -> str:
    """``value`` with its sign, ``+0.0`` for anything that rounds to zero: a mean of exactly opposite
    differences can come out as -1e-16, and ``-0.0`` would read as a (tiny) deficit."""
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if text.startswith("-") and float(text) == 0 else text


def parse_method_spec(spec: str, by: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """``"mgpp@sigma1_sq=1.0"`` -> ``("mgpp", {"sigma1_sq": 1.0})``: a method, optionally pinned to
    values of ``--by`` keys (``@key=value``, repeatable), so that one method's two settings can be
    compared. A pin may name any alternative of a ``--by`` key (``prior.sigma1_sq`` for
    ``sigma1_sq|prior.sigma1_sq``); values are numbers where they read as one, ``None`` for
    ``None``/``null``. A malformed pin, or one on a key that is not a ``--by`` key, fails here."""
    method, *pins = spec.strip().split("@")
    if not method:
        raise ValueError(f"{spec!r}: no method before '@'")
    labels = {alternative: by_label(key) for key in by for alternative in key.split("|")}
    parsed = {}
    for pin in pins:
        key, sep, value = pin.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{spec!r}: a pin is '@key=value', got '@{pin}'")
        if key not in labels:
            known = ", ".join(map(by_label, by))
            raise ValueError(f"{spec!r}: '{key}' is not a --by key " + (f"(--by keys: {known})" if known else
                                                                         "(no --by keys were given)"))
        parsed[labels[key]] = _pin_value(value)
    return method, parsed


def _pin_value(text: str) -> Any:
    if text in ("None", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _same_setting(value: Any, pin: Any) -> bool:
    """Whether a split value is the pinned one, numbers by value (1 == 1.0 == 1e0)."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, pin))
    return float(value) == float(pin) if numbers else value == pin


def _at(split: tuple, pins: dict[str, Any]) -> bool:
    """Whether a cell's split holds every pinned value."""
    values = dict(split)
    return all(key in values and _same_setting(values[key], pin) for key, pin in pins.items())


@dataclass
class Unpaired:
    """A comparison a reference cell asked for that has no row, and why: said under the differences,
    so that a missing MGPP - GMP is never read as one nobody asked for."""

    experiment: str
    task: str
    sparsity: float
    reference: str
    other: str
    split: tuple
    reason: str
    everywhere: bool = False  # the reason holds for the whole experiment (no run of ``other`` in it)

    def where(self) -> str:
        setting = setting_text(self.split)
        return f"{self.task} {self.sparsity:.0%}" + (f" ({setting})" if setting else "")


def differences(runs: Sequence[Run], reference: str = "mgpp", others: Sequence[str] = ("l2", "gmp", "pa"),
                by: Sequence[str] = ()) -> list[Difference]:
    """Per experiment, task, sparsity (and split keys: ``by`` and :func:`table_split_keys`):
    ``reference - other`` for each metric, over the seeds both have. ``reference`` and ``others`` are
    methods, each optionally pinned to ``--by`` values (:func:`parse_method_spec`): ``reference``
    ``mgpp@sigma1_sq=1.0`` against ``mgpp@sigma1_sq=0.05`` is MGPP's slab against itself."""
    return compare(runs, reference, others, by)[0]


def compare(runs: Sequence[Run], reference: str = "mgpp", others: Sequence[str] = ("l2", "gmp", "pa"),
            by: Sequence[str] = ()) -> tuple[list[Difference], list[Unpaired]]:
    """:func:`differences`, and for every reference cell a comparison has no row for, why
    (:class:`Unpaired`)."""
    reference_spec, others_spec = reference, list(others)
    reference, reference_pins = parse_method_spec(reference, by)
    others = [parse_method_spec(other, by) for other in others]
    cells: dict[tuple, dict[int, list[float]]] = {}
    run_of: dict[tuple, dict[int, Run]] = {}
    models: dict[tuple, set] = {}  # a baseline stands in for another setting of the same model only
    labels: dict[tuple, list[str]] = {}
    started: set[tuple] = set()  # cells with a run, finished or not
    for (experiment, task, method, sparsity, by_values), members in group_runs(runs, by).items():
        key = (experiment, task, _sparsity_key(sparsity), by_values)
        started.add(key + (method,))
        done = [r for r in members if r.finished]
        if not done:
            continue
        task_cfg = done[0].config.get("task") or {}
        columns, scale = metric_columns(task_cfg), percent_scale(task_cfg)
        labels[key] = [label for _, label in columns]
        cells[key + (method,)] = {int(r.get("seed", 0)): [scale * float(r.metrics.get(k, math.nan)) for k, _ in columns]
                                  for r in done}
        run_of[key + (method,)] = {int(r.get("seed", 0)): r for r in done}
        models[key + (method,)] = {r.get("model.name") for r in done}
    swept = {by_label(k) for k in by}
    started_in_order = sorted(started, key=str)
    out, unpaired = [], []
    reference_found, answered = False, set()  # answered: the indices of ``others`` that gave a row
    for key, label_list in sorted(labels.items(), key=str):
        mine = cells.get(key + (reference,), {})
        if not _at(key[3], reference_pins) or not mine:
            continue
        reference_found = True
        experiment, task, sparsity, split = key
        for index, (other, pins) in enumerate(others):
            # the other method at the reference's setting, with its pinned keys at their pins instead
            wanted = {**dict(key[3]), **pins}
            target = next((k for k in started_in_order if k[:3] == key[:3] and k[-1] == other
                           and dict(k[3]).keys() == wanted.keys() and _at(k[3], wanted)), None)
            if target in cells:
                theirs_key, why = target, ""
            elif target is not None:  # still running at this setting: wait for it, no stand-in
                theirs_key, why = None, f"its {other} run at this setting has not finished"
            else:
                theirs_key, why = _stand_in(cells, models, key + (reference,), other, swept, pins)
            if theirs_key == key + (reference,):  # a cell against itself
                continue
            seeds = sorted(set(mine) & set(cells.get(theirs_key, {})))
            if theirs_key is not None and not seeds:
                why = f"no seed in common ({reference}: {_seed_list(mine)}; {other}: {_seed_list(cells[theirs_key])})"
            if not seeds:
                absent = not any(k[0] == experiment and k[-1] == other for k in started)
                unpaired.append(Unpaired(experiment, task, float(sparsity), reference, other, split,
                                         f"no {other} run in this experiment" if absent else why, absent))
                continue
            theirs = cells[theirs_key]
            answered.add(index)
            other_split = tuple(item for item in theirs_key[3] if item not in key[3])
            pairs = tuple((run_of[key + (reference,)][s], run_of[theirs_key][s]) for s in seeds)
            for i, label in enumerate(label_list):
                out.append(Difference(experiment, task, float(sparsity), reference, other, label,
                                      [mine[s][i] - theirs[s][i] for s in seeds], seeds, split=split,
                                      other_split=other_split, pairs=pairs))
    # A pinned method that yields no row is most likely a misread value or a knob the method does not
    # read (GMP's sigma1_sq is unset): say so rather than print a table without it.
    unmatched = [reference_spec] if reference_pins and not reference_found else []
    unmatched += [spec for index, (spec, (_, pins)) in enumerate(zip(others_spec, others))
                  if pins and index not in answered]
    for spec in unmatched:
        log.warning("%s: no finished run to compare at that setting (values compare as numbers; a knob the method "
                    "does not read, such as GMP's sigma1_sq, is unset)", spec)
    return out, unpaired


def _seed_list(by_seed: dict) -> str:
    return ", ".join(map(str, sorted(by_seed)))


def _stand_in(cells: dict, models: dict, reference: tuple, method: str, swept: set[str],
              pins: dict[str, Any]) -> tuple[tuple | None, str]:
    """The cell of ``method`` to compare with the ``reference`` cell when ``method`` has no run at the
    reference's setting: at the same experiment, task, sparsity and model, matching the reference on
    every ``--by`` key the method itself ran at more than one value of and on every other split (GMP
    in a prior sweep: its one setting; L2 in a sweep of MGPP's σ0² and σ1²: the run at the same σ1²),
    and on ``pins`` where ``method`` was pinned (those keys take the pinned values instead). A split
    key that is no ``--by`` key and that the method's runs leave unset (a knob its prior does not read)
    matches any value. The rows name the stand-in's own setting, since a key the method ran at one
    value only may still matter to it (PA's σ1²).
    ``(cell, "")`` when exactly one cell matches, else ``(None, why not)``."""
    here = [k for k in cells if k[:3] == reference[:3] and k[-1] == method]
    candidates = [k for k in here if models[k] == models.get(reference) and _at(k[3], pins)]
    varied = {key for key in swept if len({dict(k[3]).get(key) for k in candidates}) > 1}  # pinned keys: never
    wanted = {**dict(reference[3]), **pins}

    def matches(split) -> bool:
        return all(k in pins or (k in swept and k not in varied) or (v is None and k not in swept)
                   or _same_setting(wanted.get(k), v) for k, v in split)

    found = [k for k in candidates if matches(k[3])]
    if len(found) == 1:
        return found[0], ""
    if not here:
        return None, f"no finished {method} run at this task and sparsity"
    ran = "; ".join(setting_text(k[3]) or "no setting named" for k in (found or here))
    if found:
        return None, f"{len(found)} {method} runs could stand in ({ran}): name the key that tells them apart with --by"
    return None, f"no {method} run matches this setting ({method} ran at: {ran})"


def gap_changes(diffs: Sequence[Difference]) -> list[Difference]:
    """For each comparison measured at two or more sparsities: its change from each sparsity to the
    next higher one, paired by seed (e.g. (MGPP - L2 at 90%) - (MGPP - L2 at 80%) per seed)."""
    by_comparison: dict[tuple, list[Difference]] = defaultdict(list)
    for d in diffs:
        if d.from_sparsity is None and d.sparsity > 0:
            by_comparison[(d.experiment, d.task, d.split, d.reference, d.other, d.other_split, d.label)].append(d)
    out = []
    for members in by_comparison.values():
        members = sorted(members, key=lambda d: d.sparsity)
        for low, high in zip(members, members[1:]):
            at_low = dict(zip(low.seeds, low.diffs))
            seeds = [s for s in high.seeds if s in at_low]
            if seeds:
                at_high = dict(zip(high.seeds, high.diffs))
                out.append(replace(high, diffs=[at_high[s] - at_low[s] for s in seeds], seeds=seeds,
                                   from_sparsity=low.sparsity, pairs=(), p_holm=math.nan))
    return out


DIFFERENCES_NOTE = ("Mean difference in percent points over the seeds both methods have (paired by seed), with a "
                    "95% Student-t interval [low, high] (none for a single seed) and the t-test's two-sided p-value, "
                    "unadjusted and Holm-adjusted across every comparison this report prints. These intervals leave "
                    "out the evaluation set's own sampling error (see the per-example table, where there is one). "
                    "An interval that excludes 0 is a difference the seeds resolve. Where a method has no run (finished or running) at the reference's "
                    "setting, another of its runs stands in: the one that matches on the `--by` keys the method was "
                    "itself run at several values of (a baseline run at one setting stands in for every setting); "
                    "the row then names the stand-in's own values (\"pa at sigma1_sq=0.05\").")
CHANGES_NOTE = ("Per seed, the difference at the higher sparsity minus the difference at the lower one, then mean "
                "and 95% Student-t interval as above: positive means the reference's lead grows with sparsity "
                "(the paper: MGPP - L2 on MNLI +1.2 at 80%, +3.6 at 90%).")


def differences_markdown(diffs: Sequence[Difference], unpaired: Sequence[Unpaired] = (),
                         changes: Sequence[Difference] | None = None) -> str:
    """A table per experiment: a row per (task, sparsity, comparison), a column per metric; then, where
    a comparison was made at several sparsities, how it changed between them (``changes``; default
    :func:`gap_changes` of ``diffs``); then the comparisons that have no row, each with its reason
    (:func:`unpaired_lines`)."""
    out = []
    changes = gap_changes(diffs) if changes is None else changes
    for experiment in dict.fromkeys([*(d.experiment for d in diffs), *(u.experiment for u in unpaired)]):
        mine = [d for d in diffs if d.experiment == experiment]
        for title, members, note in ((f"{experiment}: differences", mine, DIFFERENCES_NOTE),
                                     (f"{experiment}: how the differences change with sparsity",
                                      [c for c in changes if c.experiment == experiment], CHANGES_NOTE)):
            if members:
                out += [f"### {title}", "", "| task | sparsity | difference | metrics | seeds |",
                        "|---|---|---|---|---|", *_difference_rows(members), "", note, ""]
        missing = unpaired_lines([u for u in unpaired if u.experiment == experiment])
        if missing:
            out += ([] if mine else [f"### {experiment}: differences", ""]) + ["Not compared:", "", *missing, ""]
    return "\n".join(out)


def unpaired_lines(unpaired: Sequence[Unpaired]) -> list[str]:
    """A Markdown line per comparison and reason, naming every cell it holds for (a method with no
    run at all is one line, not one per cell)."""
    by_reason: dict[tuple, list[Unpaired]] = defaultdict(list)
    for u in unpaired:
        by_reason[(u.reference, u.other, u.reason)].append(u)
    return [f"- {reference} − {other}: {reason}" if members[0].everywhere else
            f"- {reference} − {other} at {'; '.join(u.where() for u in members)}: {reason}"
            for (reference, other, reason), members in by_reason.items()]


def _difference_rows(diffs: Sequence[Difference]) -> list[str]:
    rows = []
    identity = lambda d: (d.task, d.from_sparsity, d.sparsity, d.split, d.reference, d.other, d.other_split)  # noqa: E731
    for group in dict.fromkeys(map(identity, diffs)):
        task, from_sparsity, sparsity, split, reference, other, other_split = group
        cells = [d for d in diffs if identity(d) == group]
        metrics = "; ".join(f"{d.label} {d.text()}" for d in cells)
        where = f"{from_sparsity:.0%} → {sparsity:.0%}" if from_sparsity is not None else f"{sparsity:.0%}"
        mine, theirs = setting_text(split), setting_text(other_split)
        parts = ([mine] if mine else []) + ([f"{other} at {theirs}"] if theirs else [])
        setting = " (" + "; ".join(parts) + ")" if parts else ""
        rows.append(f"| {task} | {where} | {reference} − {other}{setting} | {metrics} | {cells[0].n} |")
    return rows


KEPT_NOTE = (f"From each run's last `{LOG_MAGNITUDE_HISTOGRAM}` histogram (the target weights a run keeps, at "
             "its last logged step): Fig. 2a in numbers. Mean±std over seeds. A penalty that shrinks the survivors "
             "shows as a lower mean and more of them below 1e-2 (GMP's, without a prior, are the yardstick). Runs "
             "without a local `log.jsonl` (W&B) are left out, so a cell may count fewer seeds here than above.")


def share_below(histogram: dict, log10_bound: float) -> float:
    """The fraction of a log10-magnitude histogram's entries below ``log10_bound``, counting the bin that
    straddles the bound in proportion to the part of it below."""
    counts, edges = histogram["counts"], histogram["edges"]
    total = sum(counts)
    below = 0.0
    for count, low, high in zip(counts, edges[:-1], edges[1:]):
        if high <= log10_bound:
            below += count
        elif low < log10_bound:
            below += count * (log10_bound - low) / (high - low)
    return below / total if total else math.nan


@dataclass
class KeptWeights:
    """The kept target weights of one cell's seeds at the end of training."""

    experiment: str
    task: str
    sparsity: float
    method: str
    split: tuple  # ((key, value), ...) as the tables split cells
    mean_log10: list[float]  # per seed
    below_1e2: list[float]
    below_1e3: list[float]

    @staticmethod
    def _text(values: list[float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        mean = scale * statistics.fmean(values)
        spread = f"±{scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
        return f"{mean:.{digits}f}{spread}{unit}"

    @property
    def label(self) -> str:
        return group_label(self.method, self.split)

    def markdown_row(self) -> str:
        return (f"| {self.task} | {self.sparsity:.0%} | {self.label} | {self._text(self.mean_log10)} | "
                f"{self._text(self.below_1e2, 100, 1, '%')} | {self._text(self.below_1e3, 100, 1, '%')} | "
                f"{len(self.mean_log10)} |")


def kept_weights(runs: Sequence[Run], by: Sequence[str] = ()) -> list[KeptWeights]:
    """Per pruned cell (as the tables group runs), the magnitudes of the weights its finished seeds kept."""
    out = []
    for (experiment, task, method, sparsity, by_values), members in group_runs(runs, by).items():
        if float(sparsity) <= 0:
            continue
        hists = [h for h in (r.last_histogram(LOG_MAGNITUDE_HISTOGRAM) for r in members if r.finished)
                 if h and h.get("num")]
        if hists:
            out.append(KeptWeights(experiment, task, float(sparsity), method, by_values,
                                   [h["sum"] / h["num"] for h in hists], [share_below(h, -2.0) for h in hists],
                                   [share_below(h, -3.0) for h in hists]))
    return sorted(out, key=lambda k: (k.experiment, k.task, k.sparsity, method_rank(k.method), k.label))


def kept_weights_markdown(kept: Sequence[KeptWeights]) -> str:
    """A table per experiment: a row per pruned cell."""
    out = []
    for experiment in dict.fromkeys(k.experiment for k in kept):
        out += [f"### {experiment}: the weights each method keeps", "",
                "| task | sparsity | method | mean log10 \\|θ\\| of the kept | kept below 1e-2 | kept below 1e-3 | seeds |",
                "|---|---|---|---|---|---|---|", *(k.markdown_row() for k in kept if k.experiment == experiment), "",
                KEPT_NOTE, ""]
    return "\n".join(out)


def group_label(method: str, split: Sequence[tuple[str, Any]]) -> str:
    """How a group is named in tables and figures: the method, then the settings that split it."""
    extra = setting_text(split)
    return f"{method} ({extra})" if extra else method


def setting_text(split: Sequence[tuple[str, Any]]) -> str:
    """``key=value, ...`` of the settings that are set (a knob the method does not read is None: left out)."""
    return ", ".join(f"{k}={v}" for k, v in split if v is not None)


def _method_label(row: Row) -> str:
    return group_label(row.method, row.by)


def method_rank(method: str) -> tuple[int, str]:
    """Where ``method`` sorts in tables and figures: the paper's order, then unknown methods by name."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return order.get(method, len(order)), method


def to_markdown(rows: Sequence[Row], paper: Sequence[PaperCell] = ()) -> str:
    """One table per experiment: a row per (sparsity, method), a column per task; cells are
    ``mean±std`` over seeds (metrics joined by ``/``). The paper's row (``<method> (paper)``)
    follows ours, and methods only the paper ran (its baselines) get a paper row of their own.
    Without ``paper``, the numbers the rows carry are shown beside them."""
    paper = list(paper) or [PaperCell(r.experiment, r.task, r.method, r.sparsity, r.paper, r.labels, r.paper_table)
                            for r in rows if r.paper]
    out = []
    experiments = dict.fromkeys([*(r.experiment for r in rows), *(c.experiment for c in paper)])
    for experiment in experiments:
        mine = [r for r in rows if r.experiment == experiment]
        cells = [c for c in paper if c.experiment == experiment]
        tasks = list(dict.fromkeys([*(c.task for c in cells), *(r.task for r in mine)]))
        labels = {c.task: c.labels for c in cells if c.labels} | {r.task: r.labels for r in mine}
        table = next((x for x in [*(r.paper_table for r in mine), *(c.table for c in cells)] if x), None)
        digits = max([1, *(c.digits for c in cells)])
        out.append(f"## {experiment}" + (f" (paper {table})" if table else ""))
        out.append("")
        header = ["sparsity", "method", *[f"{t} ({'/'.join(labels.get(t, []))})" for t in tasks], "seeds"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        keys = {(r.sparsity, r.method) for r in mine} | {(c.sparsity, c.method) for c in cells}
        for sparsity, method in sorted(keys, key=lambda k: (k[0], method_rank(k[1]))):
            ours = [r for r in mine if r.sparsity == sparsity and r.method == method]
            for label in dict.fromkeys(_method_label(r) for r in ours):
                by_task = {r.task: r for r in ours if _method_label(r) == label}
                seeds = sorted({r.n for r in by_task.values()})
                line = [by_task[t].cell(digits) if t in by_task else "" for t in tasks]
                out.append(f"| {sparsity:.0%} | {label} | " + " | ".join(line) + f" | {'/'.join(map(str, seeds))} |")
            theirs = {c.task: c for c in cells if c.sparsity == sparsity and c.method == method}
            if theirs:
                line = [_paper_text(theirs[t].values, digits) if t in theirs else "" for t in tasks]
                out.append(f"| {sparsity:.0%} | {method} (paper) | " + " | ".join(line) + " | |")
        unfinished = sum(r.unfinished for r in mine)
        out.append("")
        note = ("Cells: mean±std over seeds (sample std; none for one seed), in percent; metrics in the "
                "order of the column header.")
        if any(r.collapsed for r in mine):
            note += (f" \"(k/n collapsed)\": k of the n seeds ended predicting one class for at least "
                     f"{COLLAPSED_FRACTION:.0%} of the dev set (or a constant score), or with an accuracy within "
                     f"{100 * CHANCE_MARGIN:.0f} point of always predicting the commonest dev label; they are in the "
                     "mean, marked.")
        if cells:
            note += (f" Rows marked (paper) are the paper's {table or 'table'}, transcribed in the experiment file; "
                     f"{NOT_CONVERGED}: the paper's non-convergence.")
        if not mine:
            note += " No finished run of ours yet."
        split = sorted({k for r in mine for k, _ in r.by})
        if split:
            note += (f" Runs whose configs differ in {', '.join(split)} are kept apart (shown in the method "
                     "column), never averaged as seeds.")
        out.append(note + (f" {unfinished} unfinished runs not counted." if unfinished else ""))
        out.append("")
    return "\n".join(out)


def to_csv(rows: Sequence[Row], path: str | Path, paper: Sequence[PaperCell] = ()) -> None:
    """Long format: one line per (group, metric), with the paper's number when there is one;
    paper cells without a run of ours come last, with empty mean/std/n."""
    by_keys = list(dict.fromkeys(k for r in rows for k, _ in r.by))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "task", "method", "sparsity", *by_keys, "metric", "mean", "std", "n", "seeds",
                    "paper", "achieved_sparsity", "wall_time_s"])
        for r in rows:
            by = dict(r.by)
            for i, label in enumerate(r.labels):
                theirs = r.paper[i] if r.paper and i < len(r.paper) else ""
                theirs = NOT_CONVERGED if theirs is None else theirs
                w.writerow([r.experiment, r.task, r.method, r.sparsity, *[by.get(k, "") for k in by_keys], label,
                            _num(r.means[i]), _num(r.stds[i]), r.n, " ".join(map(str, r.seeds)), theirs,
                            _num(r.achieved_sparsity, 6), _num(r.wall_time_s, 1)])
        ours = {(r.experiment, r.task, r.method, _sparsity_key(r.sparsity)) for r in rows}
        for c in paper:
            if (c.experiment, c.task, c.method, _sparsity_key(c.sparsity)) in ours:
                continue
            for i, value in enumerate(c.values):
                label = c.labels[i] if i < len(c.labels) else f"metric{i + 1}"
                w.writerow([c.experiment, c.task, c.method, c.sparsity, *[""] * len(by_keys), label, "", "", 0, "",
                            NOT_CONVERGED if value is None else value, "", ""])


def _num(value: float, digits: int = 4) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"
