"""GLUE sequence classification (and STS-B regression)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pathlib import Path

from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from ..metrics import for_task
from ..predictions import ID_COLUMN, PredictionRecordingTrainer
from .base import Task, load_model
from .data import subset
from .glue_data import load_glue

__all__ = ["GlueTask"]


#: the split of train held out for selection (``GlueTask.heldout``), and the shuffle that picks it
HELDOUT, HELDOUT_SEED = "heldout", 20261204


def numbered(ds):
    """``ds`` with each example's position in its split (the id its predictions are written under)."""
    return ds if ID_COLUMN in ds.column_names else ds.add_column(ID_COLUMN, list(range(len(ds))))


def held_out(train, n: int):
    """``(the rest of train, n examples of it)``: a fixed slice (the same for every run and seed), the
    held-out examples keeping their position in train as their id."""
    if not 0 < n < len(train):
        raise ValueError(f"heldout={n} must leave examples to train on ({len(train)} in train)")
    order = numbered(train).shuffle(seed=HELDOUT_SEED)
    kept = sorted(order.select(range(n, len(train)))[ID_COLUMN])
    return train.select(kept), order.select(range(n))


@dataclass
class GlueTask(Task):
    """A GLUE task: one or two text fields, a label (``num_labels=1``: regression)."""

    text_keys: list[str] = field(default_factory=lambda: ["sentence"])
    num_labels: int = 2
    max_length: int = 128
    #: the splits evaluated: the in-loop evaluations use the first, the final one every split
    #: (``validation``; MRPC also ``test``, its labelled test set; ``heldout``, see below)
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    #: examples of train held out as the split ``heldout`` (0: none): a selection set for tasks whose
    #: test labels are hidden, so that hyperparameters are chosen on it and judged on ``validation``.
    #: The same slice for every run and seed (a fixed shuffle), and never trained on.
    heldout: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1: regression), got num_labels={self.num_labels}")
        if not 1 <= len(self.text_keys) <= 2:
            raise ValueError(f"text_keys takes one or two columns, got text_keys={list(self.text_keys)}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got max_length={self.max_length}")
        if self.heldout < 0 or (HELDOUT in self.eval_splits) != (self.heldout > 0):
            raise ValueError(f"heldout={self.heldout} examples of train and eval_splits={list(self.eval_splits)}: "
                             f"set both (task.heldout=<n> with '{HELDOUT}' among the eval_splits) or neither")
        from .glue_data import LAYOUTS, _num_classes

        layout = LAYOUTS.get(self.name)
        if layout is not None:
            expected = 1 if layout.regression else _num_classes(layout)
            if self.num_labels != expected:
                raise ValueError(f"num_labels={self.num_labels} does not match GLUE {self.name} "
                                 f"({'regression: 1' if layout.regression else f'{expected} classes'})")

    def build_model(self, model_cfg):
        return load_model(model_cfg, AutoModelForSequenceClassification, num_labels=self.num_labels)

    def datasets(self, tokenizer, data_dir, max_train_samples, max_eval_samples, seed):
        raw = load_glue(self.name, data_dir, ["train", *(s for s in self.eval_splits if s != HELDOUT)])
        if self.heldout:
            raw["train"], raw[HELDOUT] = held_out(raw["train"], self.heldout)
        keys = list(self.text_keys)
        missing = [k for k in keys if k not in raw["train"].column_names]
        if missing:
            raise ValueError(f"text_keys {missing} are not columns of {self.name}: {raw['train'].column_names}")
        unknown = [s for s in self.eval_splits if s not in raw]
        if unknown:
            raise ValueError(f"eval_splits {unknown} not in {self.name}: {list(raw)}")

        def encode(ds, keep=("label",)):
            tokenize = lambda batch: tokenizer(*[batch[k] for k in keys], truncation=True,  # noqa: E731
                                               max_length=self.max_length)
            drop = [c for c in ds.column_names if c not in keep]
            return ds.map(tokenize, batched=True, remove_columns=drop, desc="tokenizing")

        train = encode(subset(raw["train"], max_train_samples, seed))
        evals = {split: encode(subset(numbered(raw[split]), max_eval_samples, seed), keep=("label", ID_COLUMN))
                 for split in self.eval_splits}
        return train, evals

    def make_trainer(self, model, args, train_set, eval_sets, tokenizer):
        """A Trainer that also writes each evaluation's per-example predictions into the run folder
        (``mgpp.predictions``); the ``idx`` column reaches the model only if the user turned off the
        Trainer's removal of unused columns, so it is dropped here then."""
        if not args.remove_unused_columns:
            eval_sets = {k: v.remove_columns(ID_COLUMN) for k, v in eval_sets.items()}
        return PredictionRecordingTrainer(
            model=model, args=args, train_dataset=train_set, eval_dataset=next(iter(eval_sets.values())),
            processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=for_task(self.metrics), predictions_dir=Path(args.output_dir).parent,
            split_names=list(eval_sets))
