"""Per-example predictions of every evaluation, in the run folder, so that methods can be compared
example by example (``mgpp.report``'s paired bootstrap over seeds and examples).

One CSV per evaluation: ``<run>/predictions/<split>/step<N>.csv`` with the columns ``id`` (the
example's position in its split, as read: the hub's ``idx``), ``label`` and ``prediction`` (the
predicted class, or the score of a regression task). A split evaluated twice at one step (the
final evaluation of a run whose last in-loop evaluation fell on its last step) keeps the last.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from transformers import Trainer

from .run_folder import PREDICTIONS_DIR

__all__ = ["ID_COLUMN", "predictions_path", "write_predictions", "read_predictions", "final_predictions",
           "PredictionRecordingTrainer"]

#: the column that carries each example's id through tokenization (the Trainer drops it before the model)
ID_COLUMN = "idx"


def predictions_path(run_dir: str | Path, split: str, step: int) -> Path:
    return Path(run_dir) / PREDICTIONS_DIR / split / f"step{step:07d}.csv"


def write_predictions(path: str | Path, ids: Sequence[int], labels: np.ndarray, predictions: np.ndarray) -> None:
    """``id,label,prediction`` rows; logits (n, classes) become the predicted class."""
    predictions = np.asarray(predictions)
    if predictions.ndim > 1 and predictions.shape[-1] > 1:
        predictions = predictions.argmax(-1)
    predictions = predictions.reshape(len(ids), -1)[:, 0]
    labels = np.asarray(labels).reshape(len(ids), -1)[:, 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    regression = np.issubdtype(predictions.dtype, np.floating)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "label", "prediction"])
        for i, y, p in zip(ids, labels.tolist(), predictions.tolist()):
            out.writerow([int(i), y, f"{p:.6g}" if regression else int(p)])
    tmp.replace(path)  # a reader never sees half a file


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """``{"id", "label", "prediction"}`` arrays of one predictions file, sorted by id."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"id", "label", "prediction"}:
        raise ValueError(f"{path}: not a predictions file (columns id, label, prediction)")
    ids = np.array([int(r["id"]) for r in rows])
    order = np.argsort(ids, kind="stable")
    as_number = lambda column: np.array([float(r[column]) for r in rows])[order]  # noqa: E731
    return {"id": ids[order], "label": as_number("label"), "prediction": as_number("prediction")}


def final_predictions(run_dir: str | Path) -> dict[str, Path]:
    """``{split: path}`` of each split's last evaluation in a run folder (empty when it has none)."""
    root = Path(run_dir) / PREDICTIONS_DIR
    if not root.is_dir():
        return {}
    out = {}
    for split in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(split.glob("step*.csv"))
        if files:
            out[split.name] = files[-1]
    return out


class PredictionRecordingTrainer(Trainer):
    """A ``Trainer`` that writes every evaluation's per-example predictions under ``predictions_dir``.

    ``split_names``: the eval splits in order; the in-loop evaluation (prefix ``eval``) is of the
    first, the final one of each split ``eval_<split>``. Ids come from the eval set's ``idx`` column.
    """

    def __init__(self, *args, predictions_dir: str | Path | None = None, split_names: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.predictions_dir, self.split_names = predictions_dir, list(split_names)
        self._evaluating: tuple[str, list[int] | None] | None = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        ids = dataset[ID_COLUMN] if ID_COLUMN in getattr(dataset, "column_names", ()) else None
        split = metric_key_prefix[len("eval_"):] if metric_key_prefix.startswith("eval_") else \
            (self.split_names[0] if self.split_names else "eval")
        self._evaluating = (split, ids)
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._evaluating = None

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        if self.predictions_dir is not None and self._evaluating is not None and self.is_world_process_zero():
            split, ids = self._evaluating
            predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            if predictions is not None and output.label_ids is not None:
                ids = ids if ids is not None else list(range(len(output.label_ids)))
                write_predictions(predictions_path(self.predictions_dir, split, self.state.global_step), ids,
                                  output.label_ids, predictions)
        return output
