"""Finding runs: the folders ``train()`` writes, or a W&B project."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import yaml

log = logging.getLogger(__name__)

__all__ = ["Run", "find_runs", "wandb_runs"]


@dataclass
class Run:
    """One training run: its resolved config, its final metrics (None while unfinished), its log."""

    config: dict[str, Any]
    metrics: dict[str, Any] | None
    path: Path | None = None
    source: str = "local"
    _records: list[dict] | None = field(default=None, repr=False)

    def get(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``task.name``, ``prior.lam``)."""
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
        path = self.path / "log.jsonl" if self.path else None
        if path is None or not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def scalars(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of a logged scalar, the last value kept for a repeated step."""
        by_step: dict[int, float] = {}
        for r in self.records:
            if r.get("kind") == "scalars" and key in r:
                by_step[int(r["step"])] = float(r[key])
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def last_histogram(self, name: str = "weights/nonzero_targets") -> dict | None:
        hists = [r for r in self.records if r.get("kind") == "histogram" and r.get("name") == name]
        return max(hists, key=lambda r: r["step"]) if hists else None


def _load_run(folder: Path) -> Run:
    with open(folder / "config.yaml", encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    return Run(config=config, metrics=metrics, path=folder)


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run folder (one holding the ``config.yaml`` that ``train()`` writes) under ``paths``.

    Hydra's own ``.hydra/config.yaml`` (unresolved) and checkpoint folders are not runs.
    """
    runs, seen = [], set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run or sweep folder: {root}")
        for config in sorted(root.rglob("config.yaml")) if root.is_dir() else []:
            folder = config.parent
            if ".hydra" in folder.parts or "checkpoints" in folder.parts or folder in seen:
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
        runs.append(Run(config=dict(r.config), metrics=summary if finished else None, source=f"wandb:{r.path}",
                        _records=[]))
    return runs
