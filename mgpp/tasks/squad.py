"""Extractive question answering: SQuAD v1.1 (paper Table 3).

Standard preparation (question + context windows of ``max_length`` tokens with a
``doc_stride`` overlap, offsets kept for evaluation) and post-processing (the ``n_best``
start and end logits per window, spans of at most ``max_answer_length`` tokens inside the
context, best score over an example's windows), scored with the official exact match and
F1 (answers normalised: lower case, no punctuation, no articles, single spaces).
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
from datasets import Dataset
from transformers import AutoModelForQuestionAnswering, Trainer, default_data_collator

from .base import Task, load_model
from .data import ENV_DIR, find_data_dir, read_text, subset

__all__ = ["SquadTask", "normalize_answer", "exact_match", "f1", "squad_metrics", "read_squad_json"]


# -- official metric ------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the max over an example's gold answers, averaged."""
    if not golds:
        return {"exact_match": 0.0, "f1": 0.0}
    em = sum(max(exact_match(predictions.get(i, ""), g) for g in answers) for i, answers in golds.items())
    f = sum(max(f1(predictions.get(i, ""), g) for g in answers) for i, answers in golds.items())
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f / len(golds)}


# -- data ------------------------------------------------------------------------------------
def read_squad_json(path: str | Path) -> Dataset:
    """A file in the official SQuAD JSON format, flattened to the hub's columns.

    Checked as it is read: encoding, JSON, the format's fields, and every answer's span (its text at
    its ``answer_start`` in the context); an error names the file, the question id and the problem.
    """
    path = Path(path)
    text = read_text(path)  # a byte that is not UTF-8: named by line and byte offset
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        at = len(text[: err.pos].encode("utf-8"))
        raise ValueError(f"{path}: not JSON (line {err.lineno}, column {err.colno}, byte offset {at}: "
                         f"{err.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ValueError(f"{path}: not the SQuAD format (a top-level 'data' list of articles)")
    rows = collections.defaultdict(list)
    for article in document["data"]:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context")
            for qa in paragraph.get("qas", []):
                where = f"{path}, question {qa.get('id', '?')!r}"
                if not isinstance(context, str) or not qa.get("question") or "id" not in qa:
                    raise ValueError(f"{where}: needs a context, a question and an id")
                answers = qa.get("answers") or []
                for a in answers:
                    start, text = a.get("answer_start"), a.get("text")
                    if not isinstance(start, int) or not isinstance(text, str) or \
                            context[start:start + len(text)] != text:
                        raise ValueError(f"{where}: answer {text!r} is not at answer_start={start!r} of its context")
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(context)
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": [a["text"] for a in answers],
                                        "answer_start": [a["answer_start"] for a in answers]})
    if not rows["id"]:
        raise ValueError(f"{path}: no questions")
    return Dataset.from_dict(dict(rows))


def split_by_article(dataset: Dataset, eval_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Train and eval parts with no article in both: a model is never scored on text it trained on."""
    titles = sorted(set(dataset["title"]))
    order = np.random.default_rng(seed).permutation(len(titles))
    n_eval = max(1, round(eval_fraction * len(titles)))
    eval_titles = {titles[i] for i in order[:n_eval]}
    is_eval = [t in eval_titles for t in dataset["title"]]
    train = dataset.select([i for i, e in enumerate(is_eval) if not e])
    evaluation = dataset.select([i for i, e in enumerate(is_eval) if e])
    return train, evaluation


class QuestionAnsweringTrainer(Trainer):
    """A ``Trainer`` whose ``evaluate`` turns window logits into answers and scores them."""

    def __init__(self, *args, task: "SquadTask", examples: dict[str, Dataset], **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.examples = task, examples  # eval features fingerprint -> their examples

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        features = eval_dataset if eval_dataset is not None else self.eval_dataset
        examples = self.examples[features._fingerprint]
        model_inputs = features.remove_columns(["example_id", "offset_mapping"])
        output = self.predict(model_inputs, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        start_logits, end_logits = output.predictions[:2]
        answers = self.task.postprocess(examples, features, start_logits, end_logits)
        golds = {ex["id"]: ex["answers"]["text"] for ex in examples}
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in squad_metrics(answers, golds).items()}
        metrics |= {k: v for k, v in output.metrics.items() if k.endswith(("runtime", "per_second"))}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


@dataclass
class SquadTask(Task):
    """SQuAD v1.1: hub ``rajpurkar/squad``, or local files in the official JSON format."""

    metric_scale: ClassVar[float] = 1.0  # EM/F1 are percentages already

    name: str = "squad"
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "f1"])
    main_metric: str = "f1"
    max_length: int = 384
    doc_stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    #: local JSON files (official format); None: found under <data>/squad, else the hub
    train_file: Optional[str] = None
    eval_file: Optional[str] = None
    #: when set, the eval file alone is split by article: this fraction of its articles for
    #: evaluation, the rest for training (for machines that only have the dev file)
    eval_article_fraction: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.doc_stride >= self.max_length:
            raise ValueError(f"doc_stride={self.doc_stride} must be smaller than max_length={self.max_length}")
        if self.eval_article_fraction is not None and not 0 < self.eval_article_fraction < 1:
            raise ValueError(f"eval_article_fraction must lie in (0, 1), got {self.eval_article_fraction}")

    def build_model(self, model_cfg):
        return load_model(model_cfg, AutoModelForQuestionAnswering)

    def _raw(self, data_dir, seed) -> tuple[Dataset, Dataset]:
        local = find_data_dir("squad", data_dir)
        eval_file = self.eval_file or (local / "dev-v1.1.json" if local else None)
        train_file = self.train_file or (local / "train-v1.1.json" if local else None)
        if self.eval_article_fraction is not None:
            if eval_file is None or not Path(eval_file).is_file():
                raise FileNotFoundError(f"eval_article_fraction needs a local SQuAD dev file, found {eval_file}")
            return split_by_article(read_squad_json(eval_file), self.eval_article_fraction, seed)
        if train_file is not None and Path(train_file).is_file() and Path(eval_file).is_file():
            return read_squad_json(train_file), read_squad_json(eval_file)
        asked = self.train_file or self.eval_file or data_dir or os.environ.get(ENV_DIR)
        if asked:  # local files were asked for: never fall back to the hub
            missing = [str(f) for f in (train_file, eval_file) if f is None or not Path(f).is_file()]
            raise FileNotFoundError(f"{self.name}: SQuAD file(s) not found: {missing}"
                                    + ("; with only the dev file at hand, use task=squad_dev_split" if
                                       eval_file is not None and Path(eval_file).is_file() else ""))
        from datasets import load_dataset

        hub = load_dataset("rajpurkar/squad")
        return hub["train"], hub["validation"]

    def datasets(self, tokenizer, data_dir, max_train_samples, max_eval_samples, seed):
        train_raw, eval_raw = self._raw(data_dir, seed)
        train_raw, eval_raw = subset(train_raw, max_train_samples, seed), subset(eval_raw, max_eval_samples, seed)
        self._tokenizer = tokenizer
        train = train_raw.map(self._train_features, batched=True, remove_columns=train_raw.column_names,
                              desc="train features")
        features = eval_raw.map(self._eval_features, batched=True, remove_columns=eval_raw.column_names,
                                desc="eval features")
        self._examples = {features._fingerprint: eval_raw}
        return train, {"validation": features}

    def _windows(self, batch):
        pad_right = self._tokenizer.padding_side == "right"
        questions = [q.lstrip() for q in batch["question"]]
        return self._tokenizer(
            questions if pad_right else batch["context"], batch["context"] if pad_right else questions,
            truncation="only_second" if pad_right else "only_first", max_length=self.max_length,
            stride=self.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
            padding="max_length",
        ), (1 if pad_right else 0)

    def _train_features(self, batch):
        enc, context_id = self._windows(batch)
        sample_map = enc.pop("overflow_to_sample_mapping")
        starts, ends = [], []
        for i, offsets in enumerate(enc.pop("offset_mapping")):
            answers = batch["answers"][sample_map[i]]
            seq_ids = enc.sequence_ids(i)
            ids = enc["input_ids"][i]
            cls = ids.index(self._tokenizer.cls_token_id) if self._tokenizer.cls_token_id in ids else 0
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            ctx = [j for j, s in enumerate(seq_ids) if s == context_id]
            if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
                starts.append(cls)  # the answer is not (wholly) in this window
                ends.append(cls)
                continue
            start = next(j for j in ctx if offsets[j][1] > start_char)
            end = next(j for j in reversed(ctx) if offsets[j][0] < end_char)
            starts.append(start)
            ends.append(end)
        enc["start_positions"], enc["end_positions"] = starts, ends
        return enc

    def _eval_features(self, batch):
        enc, context_id = self._windows(batch)
        sample_map = enc.pop("overflow_to_sample_mapping")
        enc["example_id"] = [batch["id"][s] for s in sample_map]
        enc["offset_mapping"] = [
            [o if s == context_id else None for o, s in zip(offsets, enc.sequence_ids(i))]
            for i, offsets in enumerate(enc["offset_mapping"])
        ]
        return enc

    def postprocess(self, examples, features, start_logits, end_logits) -> dict[str, str]:
        """Best answer text per example id ("" when no valid span exists)."""
        by_example = collections.defaultdict(list)
        for i, example_id in enumerate(features["example_id"]):
            by_example[example_id].append(i)
        offsets_all = features["offset_mapping"]
        answers = {}
        for example in examples:
            best, best_score = "", -np.inf
            for i in by_example[example["id"]]:
                offsets = offsets_all[i]
                top_starts = np.argsort(start_logits[i])[-1: -self.n_best - 1: -1]
                top_ends = np.argsort(end_logits[i])[-1: -self.n_best - 1: -1]
                for s in top_starts:
                    for e in top_ends:
                        if (s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None
                                or e < s or e - s + 1 > self.max_answer_length):
                            continue
                        score = start_logits[i][s] + end_logits[i][e]
                        if score > best_score:
                            best_score = score
                            best = example["context"][offsets[s][0]: offsets[e][1]]
            answers[example["id"]] = best
        return answers

    def make_trainer(self, model, args, train_set, eval_sets, tokenizer):
        return QuestionAnsweringTrainer(model=model, args=args, train_dataset=train_set,
                                        eval_dataset=eval_sets["validation"], processing_class=tokenizer,
                                        data_collator=default_data_collator, task=self, examples=self._examples)
