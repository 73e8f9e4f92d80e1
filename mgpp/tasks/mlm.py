"""Language modelling on a text corpus: masked (upstream pruning, paper Sec. 4.5) and causal (decoders).

The corpus is tokenized, concatenated and cut into blocks of ``max_length`` tokens.

* :class:`MaskedLMTask`: 15% of the tokens are masked (BERT's 80/10/10 rule). The pruned model
  is saved with its mask (``mask.safetensors``: one bit per target weight, packed), ready for
  sparse transfer: ``python -m mgpp.train task=<glue task> method=sparse_transfer model.pretrained=<run>/model``.
* :class:`CausalLMTask`: next-token prediction for decoder-only models (GPT-2, Llama-style); the
  metric is perplexity, ``exp`` of the mean token loss on the held-out blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer

from ..pruning import load_mask, save_mask  # noqa: F401  (re-exported: they used to live here)
from .base import Task, load_model
from .data import find_bad_line, resolve_data_file, subset

__all__ = ["CorpusTask", "MaskedLMTask", "CausalLMTask", "save_mask", "load_mask"]


def _load_files(files: list[str], text_key: str, data_dir: str | None):
    from datasets import load_dataset

    paths = [resolve_data_file(f, data_dir) for f in files]
    kinds = {Path(p).suffix for p in paths}
    if len(kinds) != 1 or not kinds <= {".txt", ".jsonl", ".json"}:
        raise ValueError(f"corpus files must be all .txt or all .jsonl/.json, got {files}")
    builder = "text" if kinds == {".txt"} else "json"
    try:
        dataset = load_dataset(builder, data_files=paths, split="train")
    except Exception:  # the datasets library's error names neither line nor byte: find the fault and name it
        fault = next(filter(None, (find_bad_line(p, json_lines=builder == "json" and p.endswith(".jsonl"))
                                   for p in paths)), None)
        if fault is None:
            raise
        raise ValueError(fault) from None
    if builder == "text":
        dataset = dataset.rename_column("text", text_key) if text_key != "text" else dataset
    if text_key not in dataset.column_names:
        raise ValueError(f"text_key={text_key!r} is not a field of {files}: {dataset.column_names}")
    return dataset


@dataclass
class CorpusTask(Task):
    """Shared by the language-modelling tasks: a corpus (hub or local files) cut into token blocks."""

    metric_scale: ClassVar[float] = 1.0  # loss and perplexity are not percentages

    name: str = "lm"
    metrics: list[str] = field(default_factory=lambda: ["loss", "perplexity"])
    main_metric: str = "perplexity"
    #: hub corpus (``load_dataset(hub_dataset, hub_config)``) when no ``train_files`` are given
    hub_dataset: Optional[str] = "Salesforce/wikitext"
    hub_config: Optional[str] = "wikitext-103-raw-v1"
    #: local corpus files, as given or relative to the data root
    train_files: Optional[list[str]] = None
    eval_files: Optional[list[str]] = None
    #: without eval files: this fraction of the training documents is held out for evaluation
    eval_fraction: float = 0.05
    text_key: str = "text"
    max_length: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {self.eval_fraction}")
        if not self.train_files and not self.hub_dataset:
            raise ValueError(f"task {self.name!r} needs train_files (local corpus) or hub_dataset")

    def _raw(self, data_dir, seed):
        if self.train_files:
            train = _load_files(list(self.train_files), self.text_key, data_dir)
            evaluation = _load_files(list(self.eval_files), self.text_key, data_dir) if self.eval_files else None
        else:
            from datasets import load_dataset

            hub = load_dataset(self.hub_dataset, self.hub_config)
            train, evaluation = hub["train"], hub.get("validation")
        if evaluation is None:
            parts = train.train_test_split(test_size=self.eval_fraction, seed=seed)
            train, evaluation = parts["train"], parts["test"]
        return train, evaluation

    def datasets(self, tokenizer, data_dir, max_train_samples, max_eval_samples, seed):
        train_raw, eval_raw = self._raw(data_dir, seed)
        block = self.max_length

        def tokenize(batch):
            texts = [t for t in batch[self.text_key] if t and not t.isspace()]
            return tokenizer(texts, return_special_tokens_mask=True)

        def group(batch):  # concatenate and cut into blocks of max_length tokens (the tail is dropped)
            joined = {k: sum(batch[k], []) for k in batch}
            total = (len(joined["input_ids"]) // block) * block
            return {k: [v[i: i + block] for i in range(0, total, block)] for k, v in joined.items()}

        def encode(ds, n):
            ds = ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc="tokenizing")
            return subset(ds.map(group, batched=True, desc=f"blocks of {block}"), n, seed)

        return encode(train_raw, max_train_samples), {"validation": encode(eval_raw, max_eval_samples)}

    def evaluate(self, trainer, eval_sets):
        metrics = super().evaluate(trainer, eval_sets)
        for key in [k for k in metrics if k.endswith("_loss")]:
            metrics[key[: -len("loss")] + "perplexity"] = math.exp(min(metrics[key], 50.0))
        return metrics


@dataclass
class MaskedLMTask(CorpusTask):
    """Masked language modelling on a hub corpus or local ``.txt`` / ``.jsonl`` files."""

    name: str = "mlm"
    mlm_probability: float = 0.15
    #: save mask.safetensors beside the model (for sparse transfer)
    save_mask: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {self.mlm_probability}")

    def build_model(self, model_cfg):
        return load_model(model_cfg, AutoModelForMaskedLM)

    def make_trainer(self, model, args, train_set, eval_sets, tokenizer):
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=self.mlm_probability)
        return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_sets["validation"],
                       processing_class=tokenizer, data_collator=collator)


@dataclass
class CausalLMTask(CorpusTask):
    """Causal language modelling (decoder-only models) on a hub corpus or local files: the blocks of
    :class:`MaskedLMTask`, labels = inputs (the model shifts them), no masking and no saved mask."""

    name: str = "clm"

    def build_model(self, model_cfg):
        model, tokenizer = load_model(model_cfg, AutoModelForCausalLM)
        if tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers have none; blocks are full, so never used
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def make_trainer(self, model, args, train_set, eval_sets, tokenizer):
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_sets["validation"],
                       processing_class=tokenizer, data_collator=collator)
