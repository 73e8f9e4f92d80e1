"""Finding runs: the folders ``train()`` writes, or a W&B project."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from ..run_folder import CHECKPOINT_DIR, CONFIG_FILE, LOG_FILE, METRICS_FILE, NONZERO_HISTOGRAM, key_aliases

log = logging.getLogger(__name__)

__all__ = ["Run", "LeftOut", "find_runs", "read_log", "wandb_runs"]


@dataclass
class LeftOut:
    """A run the report does not count, and why (a damaged ``metrics.json`` or ``config.yaml``)."""

    path: Path
    reason: str


class DamagedRun(ValueError):
    """A run folder whose config or final metrics cannot be read: which file, and what is wrong with it."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"{file} is damaged ({problem})")
        self.file, self.problem = file, problem


def _json_problem(err: ValueError) -> str:
    """Where a JSON document is broken: ``line 3, column 7: Expecting ',' delimiter``."""
    if isinstance(err, json.JSONDecodeError):
        return f"line {err.lineno}, column {err.colno}: {err.msg}"
    return str(err)


def read_log(path: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """The records of a ``log.jsonl`` and what was wrong with it: a line that is not a JSON object (a
    run killed mid-write leaves its last line cut short) is skipped, and named in the second list as
    ``(file, "line N (what is wrong)")``; one warning per file says so."""
    records, damaged = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                damaged.append(f"line {number} (not UTF-8 text: {err.reason})")
                continue
            except json.JSONDecodeError as err:
                damaged.append(f"line {number} (column {err.colno}: {err.msg})")
                continue
            if not isinstance(record, dict):
                damaged.append(f"line {number} (a JSON {type(record).__name__}, not a record)")
                continue
            records.append(record)
    if damaged:
        more = f" and {len(damaged) - 1} more damaged lines ({', '.join(d.split(' (')[0] for d in damaged[1:4])}" \
            f"{', ...' if len(damaged) > 4 else ''})" if len(damaged) > 1 else ""
        log.warning("%s, %s: damaged, skipped%s; the run's other %d records are used", path, damaged[0], more,
                    len(records))
    return records, [(path, d) for d in damaged]


@dataclass
class Run:
    """One training run: its resolved config, its final metrics (None while unfinished), its log."""

    config: dict[str, Any]
    metrics: dict[str, Any] | None
    path: Path | None = None
    _records: list[dict] | None = field(default=None, repr=False)
    #: damaged lines of its log.jsonl that were skipped, ``(file, "line N (what was wrong)")``, once read
    skipped_lines: list[tuple[Path, str]] = field(default_factory=list, repr=False)

    def get(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``task.name``, ``lam``)."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @cached_property
    def records(self) -> list[dict]:
        """The run's ``log.jsonl`` records (empty for W&B runs and runs without one)."""
        if self._records is not None:
            return self._records
        if not self.path or not (self.path / LOG_FILE).is_file():
            return []
        records, self.skipped_lines = read_log(self.path / LOG_FILE)
        return records

    def scalars(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of a logged scalar, the last value kept for a repeated step; ``eval/accuracy``
        and ``eval_accuracy`` name the same one (logs written before the train/ and eval/ prefixes).
        A record without the key, or with it None or NaN (a prune not made yet), or without a step, is
        skipped: a gap in the series, never a 0.0."""
        names = key_aliases(key)
        by_step: dict[int, float] = {}
        for r in self.records:
            if r.get("kind") != "scalars" or r.get("step") is None:
                continue
            value = _number(next((r[n] for n in names if r.get(n) is not None), None))
            if value is not None:
                by_step[int(r["step"])] = value
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def last_histogram(self, name: str = NONZERO_HISTOGRAM) -> dict | None:
        """The histogram ``name`` at the highest logged step (records without a step are skipped)."""
        hists = [r for r in self.records
                 if r.get("kind") == "histogram" and r.get("name") == name and r.get("step") is not None]
        return max(hists, key=lambda r: r["step"]) if hists else None


def _number(value: Any) -> float | None:
    """``value`` as a float; None for None, NaN and anything that is not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _load_run(folder: Path) -> Run:
    """A run folder's config and final metrics; :class:`DamagedRun` when either file cannot be read."""
    import yaml

    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DamagedRun(CONFIG_FILE, " ".join(str(err).split())) from None
    if not isinstance(config, dict):
        raise DamagedRun(CONFIG_FILE, f"a {type(config).__name__}, not a mapping")
    metrics = None
    if (folder / METRICS_FILE).exists():
        try:
            metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            where = _json_problem(err) if isinstance(err, json.JSONDecodeError) else f"not UTF-8 text ({err.reason})"
            raise DamagedRun(METRICS_FILE, where) from None
        if not isinstance(metrics, dict):
            raise DamagedRun(METRICS_FILE, f"a JSON {type(metrics).__name__}, not an object")
    return Run(config=config, metrics=metrics, path=folder)


def find_runs(paths: Iterable[str | Path], left_out: list[LeftOut] | None = None) -> list[Run]:
    """Every run folder (one holding the ``config.yaml`` that ``train()`` writes) under ``paths``.

    Hydra's own ``.hydra/config.yaml`` (unresolved) and checkpoint folders are not runs. A run whose
    ``metrics.json`` or ``config.yaml`` cannot be read is left out with a warning naming the file and
    line, and appended to ``left_out`` (when given) for the report to say so.
    """
    runs, seen = [], set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run or sweep folder: {root}")
        for config in sorted(root.rglob(CONFIG_FILE)) if root.is_dir() else []:
            folder = config.parent
            if ".hydra" in folder.parts or CHECKPOINT_DIR in folder.parts or folder in seen:
                continue
            seen.add(folder)
            try:
                runs.append(_load_run(folder))
            except DamagedRun as err:
                log.warning("%s is damaged (%s): the run is left out of the report", folder / err.file, err.problem)
                if left_out is not None:
                    left_out.append(LeftOut(folder, str(err)))
    return runs


def wandb_runs(project: str, filters: dict | None = None, timeout: int = 20) -> list[Run]:
    """Finished runs of a W&B project (``entity/project``), from their config and summary.

    Tables only: figures need the local ``log.jsonl``. Returns [] (with a warning) when W&B
    cannot be reached, so a report from local folders still comes out.
    """
    try:
        import wandb

        api = wandb.Api(timeout=timeout)
        found = list(api.runs(project, filters=filters or {}))
    except Exception as err:  # offline, no API key, unknown project: local folders still report
        log.warning("W&B project %s not readable (%s): reporting local runs only", project, err)
        return []
    runs = []
    for r in found:
        summary = {k: v for k, v in dict(r.summary).items() if isinstance(v, (int, float)) and not k.startswith("_")}
        finished = r.state == "finished" and any(k.startswith("eval_") for k in summary)
        runs.append(Run(config=dict(r.config), metrics=summary if finished else None,
                        _records=[]))
    return runs
