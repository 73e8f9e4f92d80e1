"""GLUE sequence classification (and STS-B regression)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer

from ..metrics import for_task
from .base import Task, load_model
from .data import subset
from .glue_data import load_glue

__all__ = ["GlueTask"]


@dataclass
class GlueTask(Task):
    """A GLUE task: one or two text fields, a label (``num_labels=1``: regression)."""

    text_keys: list[str] = field(default_factory=lambda: ["sentence"])
    num_labels: int = 2
    max_length: int = 128
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1: regression), got num_labels={self.num_labels}")
        if not 1 <= len(self.text_keys) <= 2:
            raise ValueError(f"text_keys takes one or two columns, got text_keys={list(self.text_keys)}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got max_length={self.max_length}")
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
        raw = load_glue(self.name, data_dir)
        keys = list(self.text_keys)
        missing = [k for k in keys if k not in raw["train"].column_names]
        if missing:
            raise ValueError(f"text_keys {missing} are not columns of {self.name}: {raw['train'].column_names}")
        unknown = [s for s in self.eval_splits if s not in raw]
        if unknown:
            raise ValueError(f"eval_splits {unknown} not in {self.name}: {list(raw)}")

        def encode(ds):
            tokenize = lambda batch: tokenizer(*[batch[k] for k in keys], truncation=True,  # noqa: E731
                                               max_length=self.max_length)
            drop = [c for c in ds.column_names if c != "label"]
            return ds.map(tokenize, batched=True, remove_columns=drop, desc="tokenizing")

        train = encode(subset(raw["train"], max_train_samples, seed))
        evals = {split: encode(subset(raw[split], max_eval_samples, seed)) for split in self.eval_splits}
        return train, evals

    def make_trainer(self, model, args, train_set, eval_sets, tokenizer):
        return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=next(iter(eval_sets.values())),
                       processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                       compute_metrics=for_task(self.metrics))
