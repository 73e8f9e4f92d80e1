"""One small logging interface, several backends at once.

Every backend takes scalars, histograms (already binned: counts and edges, never raw
tensors), tables and a final summary. JSONL is always on; W&B and TensorBoard are
optional. W&B follows its users' settings: online when logged in, offline otherwise (never a
prompt or a hang; ``wandb sync <run dir>/wandb/offline-run-*`` uploads later), ``WANDB_*``
variables honoured where the config leaves a key null.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

__all__ = ["Histogram", "MetricLogger", "JSONLLogger", "WandbLogger", "TensorBoardLogger", "MemoryLogger", "Loggers",
           "hparams_of", "summary_key", "wandb_logged_in"]

#: the config keys that identify a run on a dashboard (TensorBoard HParams, W&B run name and tags)
HPARAM_KEYS = ("task.name", "method.name", "sparsity", "seed", "model.name", "trainer.learning_rate",
               "trainer.adam_beta2", "trainer.max_grad_norm", "lam", "sigma0_sq", "sigma1_sq", "t_i", "t_f",
               "prune_every", "train_size")


def hparams_of(run_config: dict | None) -> dict[str, Any]:
    """The :data:`HPARAM_KEYS` a run's resolved config has, as flat scalars."""
    out = {}
    for dotted in HPARAM_KEYS:
        node: Any = run_config or {}
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float, str, bool)):
            out[dotted] = node
    return out


@dataclass
class Histogram:
    """A histogram binned where the data lives: ``len(edges) == len(counts) + 1``."""

    counts: list[int]
    edges: list[float]
    num: int
    sum: float
    sum_squares: float
    min: float
    max: float


class MetricLogger:
    """Interface of a logging backend; every method may be called from rank 0 only."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_histogram(self, name: str, histogram: Histogram, step: int) -> None: ...

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None: ...

    def finish(self, summary: dict[str, Any], exit_code: int = 0) -> None:
        """Last call: the run's summary; ``exit_code`` != 0 when training failed."""


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JSONLLogger(MetricLogger):
    """One JSON object a line in ``<run dir>/<filename>``: ``{"kind", "step", "time", ...}``."""

    def __init__(self, run_dir: str | os.PathLike, filename: str = "log.jsonl", resuming: bool = False, **_: Any):
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a run resumed from a checkpoint continues its log; a fresh start replaces a stale one
        self._file = open(self.path, "a" if resuming else "w", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def log(self, metrics, step):
        self._write({"kind": "scalars", "step": step, **{k: _jsonable(v) for k, v in metrics.items()}})

    def log_histogram(self, name, histogram, step):
        self._write({"kind": "histogram", "step": step, "name": name, **asdict(histogram)})

    def log_table(self, name, columns, rows, step):
        self._write({"kind": "table", "step": step, "name": name, "columns": list(columns),
                     "rows": [list(r) for r in rows]})

    def finish(self, summary, exit_code: int = 0):
        self._write({"kind": "summary", "exit_code": exit_code, **{k: _jsonable(v) for k, v in summary.items()}})
        self._file.close()


def wandb_logged_in() -> bool:
    """Whether W&B has an API key here (``WANDB_API_KEY``, or the netrc entry ``wandb login`` writes for
    the host of ``WANDB_BASE_URL``): read from disk, no network, no prompt."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or _settings_base_url() or "https://api.wandb.ai").hostname \
        or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def _settings_base_url() -> str | None:
    """The server ``wandb login --host`` stored in W&B's settings file, if any."""
    import configparser

    folder = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(os.path.join(folder, "settings"))
        return parser.get("default", "base_url", fallback=None)
    except configparser.Error:
        return None


def summary_key(key: str) -> str:
    """The one name a final metric has on a dashboard: the history's (``eval_accuracy`` -> ``eval/accuracy``);
    a run-level figure without one goes under ``final/`` (``sparsity`` -> ``final/sparsity``)."""
    if "/" in key:
        return key
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    return "final/" + key


class WandbLogger(MetricLogger):
    """Weights & Biases, as its users run it; one run per training job, finished by :meth:`finish`.

    Where a ``logger.wandb.*`` key is null, W&B's own environment decides: ``WANDB_MODE`` (unset: online
    when an API key is configured, else offline, so a run never prompts), ``WANDB_PROJECT`` (else
    ``mgpp``), ``WANDB_ENTITY``, ``WANDB_DIR`` (else the run folder); ``WANDB_TAGS`` add to the tags.
    Online mode that cannot start within ``init_timeout`` seconds falls back to offline.
    """

    def __init__(self, run_dir, run_config: dict | None = None, project: str | None = None, entity: str | None = None,
                 group: str | None = None, job_type: str | None = None, name: str | None = None,
                 tags: Sequence[str] = (), mode: str | None = None, dir: str | None = None, resuming: bool = False,
                 init_timeout: float = 20.0, **_: Any):
        import wandb

        self._wandb = wandb
        mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        env_tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
        # the run id lives in the run dir, so that a resumed training continues the same W&B run
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        id_file = Path(run_dir) / "wandb_run_id"
        run_id = id_file.read_text().strip() if resuming and id_file.exists() else secrets.token_hex(4)
        self.files_dir = Path(dir or os.environ.get("WANDB_DIR") or run_dir)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        init = dict(project=project or os.environ.get("WANDB_PROJECT") or "mgpp",
                    entity=entity or os.environ.get("WANDB_ENTITY") or None, group=group, job_type=job_type,
                    name=name, tags=list(dict.fromkeys([*tags, *env_tags])), config=run_config,
                    dir=str(self.files_dir), reinit="finish_previous", id=run_id,
                    resume="allow" if resuming else None)
        self.init_args = {**init, "mode": mode}
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(console="off", silent=True,
                                                                   init_timeout=init_timeout), **init)
        except Exception as err:  # noqa: BLE001 - server unreachable, no API key, ...: keep the run offline
            if mode == "offline":
                raise
            log.warning("W&B %s mode failed (%s: %s); logging offline instead (wandb sync %s/wandb/offline-run-*)",
                        mode, type(err).__name__, err, self.files_dir)
            wandb.teardown()  # the failed attempt's service state would fail the offline run too
            run_id = init["id"] = secrets.token_hex(4)
            self.init_args = {**init, "mode": "offline"}
            self.run = wandb.init(mode="offline", settings=wandb.Settings(console="off", silent=True), **init)
        id_file.write_text(run_id + "\n")

    def log(self, metrics, step):
        self.run.log(metrics, step=step)

    def log_histogram(self, name, histogram, step):
        self.run.log({name: self._wandb.Histogram(np_histogram=(histogram.counts, histogram.edges))}, step=step)

    def log_table(self, name, columns, rows, step):
        self.run.log({name: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)

    def finish(self, summary, exit_code: int = 0):
        self.run.summary.update({summary_key(k): v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish(exit_code=exit_code)  # a failed run shows as failed, not finished


class TensorBoardLogger(MetricLogger):
    """TensorBoard event files in ``<run dir>/<subdir>``; at the end, the run's HParams with its final metrics."""

    #: the module it needs and the extra that installs it: checked before a run loads anything
    requires = ("tensorboard", "tensorboard")

    def __init__(self, run_dir, subdir: str = "tensorboard", run_config: dict | None = None, **_: Any):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / subdir))
        self.hparams = hparams_of(run_config)
        self.tags: set[str] = set()  # the scalar series written, and the last step seen
        self.last_step = 0

    def log(self, metrics, step):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.tags |= set(metrics)
        self.last_step = max(self.last_step, step)

    def log_histogram(self, name, histogram, step):
        if histogram.num == 0:
            return
        self.writer.add_histogram_raw(
            name, min=histogram.min, max=histogram.max, num=histogram.num, sum=histogram.sum,
            sum_squares=histogram.sum_squares, bucket_limits=histogram.edges[1:],
            bucket_counts=histogram.counts, global_step=step,
        )

    def log_table(self, name, columns, rows, step):
        header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        body = "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows)
        self.writer.add_text(name, header + body, step)

    def finish(self, summary, exit_code: int = 0):
        # The HParams tab: one row per run, its final dev metrics as columns. The columns point at the
        # scalar series the run logged (eval/accuracy), so a metric has one name in every view.
        metrics = [summary_key(k) for k, v in summary.items()
                   if k.startswith("eval") and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and not k.endswith(("_runtime", "_per_second"))]
        if self.hparams and metrics:
            from torch.utils.tensorboard.summary import hparams

            for key, value in summary.items():  # a final metric no evaluation logged (MLM perplexity): its point
                if summary_key(key) in metrics and summary_key(key) not in self.tags:
                    self.writer.add_scalar(summary_key(key), float(value), self.last_step)
            for event in hparams(self.hparams, {m: 0.0 for m in metrics}):
                self.writer.file_writer.add_summary(event)
        self.writer.flush()
        self.writer.close()


class MemoryLogger(MetricLogger):
    """Keeps every record in :attr:`records` (the JSONL layout, as dicts): for notebooks and tests."""

    def __init__(self, **_: Any):
        self.records: list[dict[str, Any]] = []

    def log(self, metrics, step):
        self.records.append({"kind": "scalars", "step": step, **metrics})

    def log_histogram(self, name, histogram, step):
        self.records.append({"kind": "histogram", "step": step, "name": name, **asdict(histogram)})

    def log_table(self, name, columns, rows, step):
        self.records.append({"kind": "table", "step": step, "name": name, "columns": list(columns), "rows": rows})

    def finish(self, summary, exit_code: int = 0):
        self.records.append({"kind": "summary", "exit_code": exit_code, **summary})

    def scalars(self, key: str) -> dict[int, float]:
        """``{step: value}`` of one scalar."""
        return {r["step"]: r[key] for r in self.records if r["kind"] == "scalars" and key in r}


class Loggers(MetricLogger):
    """Fans every call out to several backends; drops non-numeric scalars.

    A backend that fails (W&B's server gone, a full disk under TensorBoard, a bad histogram) is
    reported once and dropped for the rest of the run: logging never stops a training run.
    """

    def __init__(self, backends: Sequence[MetricLogger]):
        self.backends = list(backends)

    def _each(self, call: str, *args) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, call)(*args)
            except Exception as err:  # noqa: BLE001 - any backend failure, by design
                log.warning("logger %s failed (%s: %s); it is dropped for the rest of this run",
                            type(backend).__name__, type(err).__name__, err)
                self.backends.remove(backend)

    def log(self, metrics, step):
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._each("log", numeric, step)

    def log_histogram(self, name, histogram, step):
        self._each("log_histogram", name, histogram, step)

    def log_table(self, name, columns, rows, step):
        self._each("log_table", name, columns, rows, step)

    def finish(self, summary, exit_code: int = 0):
        self._each("finish", summary, exit_code)  # one broken backend must not lose the others' summaries
