"""Abstractive summarization: XSum and CNN/DailyMail with BART (paper Table 4).

Documents are truncated to ``max_source_length`` tokens and summaries to
``max_target_length``; evaluation generates with beam search (``num_beams``) and scores
ROUGE-1/2/Lsum with the ``rouge-score`` package. Pruning covers the encoder and decoder
layers (the default target patterns); shared embeddings and the LM head are never targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from ..metrics import rouge
from .base import Task, load_model
from .data import resolve_data_file, subset, text_lines

__all__ = ["SummarizationTask"]


@dataclass
class SummarizationTask(Task):
    """Document -> summary; hub dataset, or local JSONL files with ``source_key`` / ``target_key`` fields."""

    metric_scale: ClassVar[float] = 1.0  # ROUGE in percent already

    name: str = "xsum"
    metrics: list[str] = field(default_factory=lambda: ["rouge1", "rouge2", "rougeLsum"])
    main_metric: str = "rouge2"
    hub_dataset: Optional[str] = "EdinburghNLP/xsum"
    hub_config: Optional[str] = None
    source_key: str = "document"
    target_key: str = "summary"
    #: local JSONL files (as given or relative to the data root); used instead of the hub when set
    train_file: Optional[str] = None
    eval_file: Optional[str] = None
    #: with only an eval file: this fraction of it is held out for evaluation, the rest trains
    eval_fraction: Optional[float] = None
    max_source_length: int = 1024
    max_target_length: int = 64
    num_beams: int = 8
    #: longest generated summary (tokens); None: max_target_length
    generation_max_length: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {self.eval_fraction}")

    def training_arguments(self, **kwargs) -> Seq2SeqTrainingArguments:
        return Seq2SeqTrainingArguments(
            predict_with_generate=True, generation_num_beams=self.num_beams,
            generation_max_length=self.generation_max_length or self.max_target_length, **kwargs,
        )

    def build_model(self, model_cfg):
        return load_model(model_cfg, AutoModelForSeq2SeqLM)

    def _check_jsonl(self, path: str) -> None:
        """Each line a JSON object with a non-empty source and target; errors name the file, the line and
        the byte offset from the start of the file."""
        import json

        count = 0
        for line_no, offset, line in text_lines(path, bom=False):  # a byte that is not UTF-8: named by line and offset
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_no}: not JSON ({err.msg}, column {err.colno}; at byte offset "
                                 f"{offset + len(line[: err.pos].encode('utf-8'))})") from None
            for key in (self.source_key, self.target_key):
                if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(f"{path}, line {line_no}: no text in field {key!r} (byte offset {offset})")
            count += 1
        if count == 0:
            raise ValueError(f"{path}: no examples")

    def _raw(self, data_dir, seed):
        from datasets import load_dataset

        if self.train_file or self.eval_file:
            files = {split: resolve_data_file(f, data_dir) for split, f in
                     (("train", self.train_file), ("validation", self.eval_file)) if f}
            for path in files.values():
                self._check_jsonl(path)
            data = load_dataset("json", data_files=files)
        else:
            data = load_dataset(self.hub_dataset, self.hub_config)
        if self.eval_fraction is not None:
            source = data["validation"] if "validation" in data else data["train"]
            parts = source.train_test_split(test_size=self.eval_fraction, seed=seed)
            return parts["train"], parts["test"]
        if "train" not in data or "validation" not in data:
            raise ValueError(f"{self.name}: need train and validation data, got splits {list(data)} "
                             "(set train_file/eval_file, or eval_fraction to split one file)")
        return data["train"], data["validation"]

    def datasets(self, tokenizer, data_dir, max_train_samples, max_eval_samples, seed):
        train_raw, eval_raw = self._raw(data_dir, seed)
        for key in (self.source_key, self.target_key):
            if key not in train_raw.column_names:
                raise ValueError(f"{self.name}: no field {key!r} in the data ({train_raw.column_names})")

        def encode(batch):
            enc = tokenizer(batch[self.source_key], max_length=self.max_source_length, truncation=True)
            enc["labels"] = tokenizer(text_target=batch[self.target_key], max_length=self.max_target_length,
                                      truncation=True)["input_ids"]
            return enc

        def prepare(ds, n):
            ds = subset(ds, n, seed)
            return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenizing")

        return prepare(train_raw, max_train_samples), {"validation": prepare(eval_raw, max_eval_samples)}

    def make_trainer(self, model, args, train_set, eval_sets, tokenizer):
        def compute_metrics(eval_prediction):
            predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
            if isinstance(predictions, tuple):
                predictions = predictions[0]
            pad = tokenizer.pad_token_id
            predictions = np.where(predictions < 0, pad, predictions)
            labels = np.where(labels < 0, pad, labels)
            decoded = tokenizer.batch_decode(predictions, skip_special_tokens=True)
            references = tokenizer.batch_decode(labels, skip_special_tokens=True)
            return rouge(decoded, references)

        return Seq2SeqTrainer(model=model, args=args, train_dataset=train_set,
                              eval_dataset=eval_sets["validation"], processing_class=tokenizer,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                              compute_metrics=compute_metrics)
