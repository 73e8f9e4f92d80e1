"""Finding runs: the folders ``train()`` writes, or a W&B project."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from ..run_folder import CHECKPOINT_DIR, CONFIG_FILE, NONZERO_HISTOGRAM, RunFolder, key_aliases

log = logging.getLogger(__name__)

__all__ = ["Run", "find_runs", "wandb_runs"]


@dataclass
class Run:
    """One training run: its resolved config, its final metrics (None while unfinished), its log."""

    config: dict[str, Any]
    metrics: dict[str, Any] | None
    path: Path | None = None
    _records: list[dict] | None = field(default=None, repr=False)

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
        return RunFolder(self.path).records() if self.path else []

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
    run = RunFolder(folder)
    return Run(config=run.saved_config() or {}, metrics=run.finished_metrics(), path=folder)


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run folder (one holding the ``config.yaml`` that ``train()`` writes) under ``paths``.

    Hydra's own ``.hydra/config.yaml`` (unresolved) and checkpoint folders are not runs.
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
            runs.append(_load_run(folder))
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
