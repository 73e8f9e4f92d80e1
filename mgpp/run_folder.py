"""One run's folder: what is in it, under which names, and whether a rerun may resume or skip it.

``train()`` writes run folders and ``mgpp.report`` reads them; both take the file names and the
logged keys from here, so that the two cannot drift apart::

    <run>/config.yaml          the resolved config (written once the run has started)
    <run>/log.jsonl            every logged scalar, histogram and table, one JSON object a line
    <run>/metrics.json         final metrics; written last, so its presence marks a finished run
    <run>/layer_sparsity.csv   per target tensor: weights, zeros, sparsity
    <run>/predictions/         per-example predictions of every evaluation: <split>/step<N>.csv
    <run>/model/               the pruned model (safetensors), with mask.safetensors after upstream pruning
    <run>/checkpoints/         Trainer checkpoints, while a run may still be resumed, each sealed
                               (mgpp.checkpoints: checksums of every file, verified on resume)
    <run>/run.lock, .run.lock  while a run is live: its holder, and the OS lock
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["RunFolder", "FolderInUse", "CONFIG_FILE", "LOG_FILE", "METRICS_FILE", "LAYER_FILE", "MODEL_DIR", "CHECKPOINT_DIR",
           "MASK_FILE", "PREDICTIONS_DIR", "LOCK_FILE", "OS_LOCK_FILE", "LAYER_COLUMNS", "LAYER_SPARSITY", "LAYER_TABLE",
           "NONZERO_HISTOGRAM", "LOG_MAGNITUDE_HISTOGRAM", "RESUME_IGNORES", "config_changes", "dashboard_key",
           "key_aliases", "flatten", "portable"]

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
LAYER_FILE = "layer_sparsity.csv"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
MASK_FILE = "mask.safetensors"
PREDICTIONS_DIR = "predictions"  # per-example predictions of every evaluation (mgpp.predictions)
SCHEDULE_STATE_FILE = "mgpp_schedule.json"  # in each checkpoint: the schedule's calibration (PA's start)
LOCK_FILE = "run.lock"  # while a run is live: who holds the folder (pid, host), for the message a second run gets
OS_LOCK_FILE = ".run.lock"  # the OS lock itself (filelock): the OS releases it when its process dies, kill -9 too
LAYER_COLUMNS = ("parameter", "weights", "zeros", "sparsity")
#: the weight histograms a run logs: the nonzero target values, and their log10 magnitudes (Fig. 2a)
NONZERO_HISTOGRAM, LOG_MAGNITUDE_HISTOGRAM = "weights/nonzero_targets", "weights/nonzero_log10_magnitude"
#: per target tensor, the sparsity the last prune left (a scalar each, logged right after prunes), and
#: the table of exact zeros logged with the histograms
LAYER_SPARSITY, LAYER_TABLE = "sparsity_after_prune/", "zeros_now/per_layer"
#: config keys that may change between an interrupted run and its resumption
RESUME_IGNORES = ("output_dir", "resume", "logger", "trainer.disable_tqdm", "verbose", "paper", "recipe")
# (an experiment file's paper numbers and its recipe table: what a run uses of the recipe shows in
# the resolved trainer/prior/schedule keys, which are compared)

# -- logged keys ------------------------------------------------------------------------------
#: the Trainer's own training-log keys, shown under train/ on a dashboard (as the HF W&B integration does)
TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "epoch", "num_input_tokens_seen")
PREFIXES = ("train/", "eval/", "pruning/", "weights/", "sparsity/", LAYER_SPARSITY, "zeros_now/")


def dashboard_key(key: str) -> str:
    """The name a Trainer log key gets in every logger: ``loss`` -> ``train/loss``,
    ``eval_accuracy`` -> ``eval/accuracy``; ``pruning/...`` and other prefixed keys stay as they are."""
    if key.startswith(PREFIXES):
        return key
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    return "train/" + (key[len("train_"):] if key.startswith("train_") else key)


def key_aliases(key: str) -> tuple[str, ...]:
    """``key`` and the flat name older logs used for it (``eval/accuracy`` -> ``eval_accuracy``), to read both."""
    if key.startswith("eval/"):
        return key, "eval_" + key[len("eval/"):]
    if key.startswith("train/"):
        return key, key[len("train/"):]
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):], key
    return (key,)


# -- config comparison --------------------------------------------------------------------------
def flatten(node, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` of a nested dict; an empty dict is a value of its own."""
    if isinstance(node, dict) and (node or not prefix):
        out = {}
        for key, value in node.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: node}


def portable(value: Any) -> Any:
    """A value as it would read on another machine: a path into an installed package (the offline
    model's folder) loses the virtual environment it was resolved in."""
    if isinstance(value, str) and "site-packages/" in value:
        return value.split("site-packages/", 1)[1]
    return value


def config_changes(saved: dict, current: dict, ignore: Iterable[str] = RESUME_IGNORES) -> list[str]:
    """Keys whose values differ between two resolved configs, except ``ignore`` (and their children).

    Keys both configs have are compared. A key that only one of them has was added or removed by a
    change of mgpp itself (a new ``trainer.`` field, say), which a rerun of an older run folder must
    survive, unless the new key sits under a node the old config held as a value (``trainer.extra``
    was ``{}``): then the user added a setting, and it counts.
    """
    old, new = flatten(saved), flatten(current)
    ignore = tuple(ignore)
    ignored = lambda key: any(key == k or key.startswith(k + ".") for k in ignore)  # noqa: E731
    changed = {k for k in old.keys() & new.keys() if portable(old[k]) != portable(new[k])}
    # a key only the new config has, under a node the old one had as a value (trainer.extra: {},
    # model.config: null), is a setting the user added, not a field mgpp added
    for key in new.keys() - old.keys():
        parts = key.split(".")
        if any(".".join(parts[:i]) in old for i in range(1, len(parts))):
            changed.add(key)
    return sorted(k for k in changed if not ignored(k))


class FolderInUse(RuntimeError):
    """Another live run holds the folder."""


def in_use_message(path: Path, holder: str | None) -> str:
    return f"{path} is in use by another run ({holder or 'a live process'}); wait for it to finish"


class RunFolder:
    """The files of one run, and the rules for rerunning into it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    # -- reading -------------------------------------------------------------------------------
    def finished_metrics(self) -> dict[str, Any] | None:
        """The final metrics of a finished run, or None."""
        path = self.path / METRICS_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def saved_config(self) -> dict | None:
        path = self.path / CONFIG_FILE
        if not path.exists():
            return None
        import yaml

        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}

    def records(self) -> list[dict]:
        """The ``log.jsonl`` records (empty when there is none)."""
        path = self.path / LOG_FILE
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def last_checkpoint(self) -> str | None:
        """The newest intact checkpoint (``mgpp.checkpoints.last_intact_checkpoint``): damaged ones are
        skipped with a warning naming the file; a ValueError when checkpoints exist and none is intact."""
        from .checkpoints import last_intact_checkpoint

        return last_intact_checkpoint(self.checkpoint_dir)

    # -- rules ---------------------------------------------------------------------------------
    def check_resumable(self, resolved: dict) -> str | None:
        """Refuse to resume or skip a run that was configured differently: its results would be mislabelled.
        Returns the checkpoint to resume from (None when there is none, or the run is finished).

        Only a folder with something to skip or resume (``metrics.json``, a checkpoint) is checked: a
        run that failed before its first checkpoint starts again anyway, so a corrected config may.
        """
        finished = self.finished_metrics() is not None
        checkpoint = None if finished else self.last_checkpoint()
        if not finished and checkpoint is None:
            return None
        saved = self.saved_config()
        if saved is None:
            return checkpoint
        changes = config_changes(saved, resolved)
        if changes:
            shown = ", ".join(changes[:6]) + (", ..." if len(changes) > 6 else "")
            raise ValueError(f"{self.path} holds a run configured differently ({shown}); choose another output_dir "
                             "or set resume=false to overwrite it")
        return checkpoint

    # -- one live run at a time -----------------------------------------------------------------
    LOCK_FILE = LOCK_FILE

    @property
    def owner(self) -> bool:
        """Whether this process reads, moves and writes the folder: rank 0 of a multi-process run, or the only one."""
        from .distributed import is_first_process

        return is_first_process()

    def acquire(self) -> None:
        """Take the folder for this process, before anything in it is read, moved or written: a second
        live run into it is refused, naming the holder. The lock is an OS lock (filelock), so one left
        by a dead process (kill -9, a crash) is free again."""
        import os
        import socket

        from filelock import FileLock, Timeout

        if not self.owner:  # multi-process training: rank 0 holds the folder
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path / OS_LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise FolderInUse(in_use_message(self.path, self._recorded_holder())) from None
        try:
            (self.path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def holder(self) -> str | None:
        """Who holds the folder now (``pid N on HOST``), or None; asks the OS lock without creating it."""
        if not (self.path / OS_LOCK_FILE).is_file():
            return None
        from filelock import FileLock, Timeout

        probe = FileLock(self.path / OS_LOCK_FILE, timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return self._recorded_holder()
        probe.release()
        return None

    def _recorded_holder(self) -> str:
        """The holder ``run.lock`` names (``pid N on HOST``), for a lock found taken."""
        try:
            holder = json.loads((self.path / LOCK_FILE).read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if not isinstance(holder, dict) or "pid" not in holder:  # its holder has not written run.lock yet
            return "a live process"
        return f"pid {holder.get('pid')} on {holder.get('host')}"

    def release(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        lock.release()  # .run.lock itself stays: removing it could let two processes lock two files
        self._lock = None

    # -- writing -------------------------------------------------------------------------------
    def write_config(self, cfg) -> None:
        from omegaconf import OmegaConf

        self.path.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, self.path / CONFIG_FILE, resolve=True)

    def write_layer_table(self, rows: Sequence[Sequence[Any]]) -> None:
        with open(self.path / LAYER_FILE, "w", newline="") as f:
            csv.writer(f).writerows([LAYER_COLUMNS, *rows])

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Last of all: marks the run finished. Written to a temporary name and renamed into place, so that a
        kill during the write leaves no truncated ``metrics.json`` (an unfinished run, not a damaged one)."""
        import os

        staging = self.path / f".{METRICS_FILE}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(staging, self.path / METRICS_FILE)

    def tidy(self) -> None:
        """After a finished run: no empty ``checkpoints/`` (the Trainer makes it whether it saves or not)."""
        if self.checkpoint_dir.is_dir() and not any(self.checkpoint_dir.iterdir()):
            self.checkpoint_dir.rmdir()

    def forget_metrics(self) -> None:
        (self.path / METRICS_FILE).unlink(missing_ok=True)

    def start_afresh(self) -> Path | None:
        """``resume=false``: the old result is forgotten and old checkpoints are moved aside (to
        ``checkpoints.old-<n>``), so that a later rerun cannot resume them under the new config."""
        self.forget_metrics()
        if not self.checkpoint_dir.is_dir():
            return None
        n = 1
        while (aside := self.path / f"{CHECKPOINT_DIR}.old-{n}").exists():
            n += 1
        self.checkpoint_dir.rename(aside)
        return aside
