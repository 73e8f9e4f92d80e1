"""What a task family provides to the training entrypoint.

A task config is a ``_target_`` node naming a :class:`Task` subclass (a dataclass), so
``train()`` never branches on the kind of task: it asks the task for its model, its data,
its ``Trainer`` and its metrics. Adding a task family is one class and one YAML file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, Trainer, TrainingArguments

log = logging.getLogger(__name__)

__all__ = ["Task", "load_model"]


def _check_local_model(source: str | None) -> None:
    """A folder given as a model is a model folder: name the problem instead of letting the hub client
    blame the repo id, or a tokenizer library blame its own files."""
    if not source:
        return
    path = Path(str(source)).expanduser()
    looks_local = path.is_absolute() or str(source).startswith((".", "~")) or path.exists()
    if not looks_local:
        return  # a hub id
    if not path.exists():
        raise FileNotFoundError(f"model folder not found: {path}")
    if path.is_dir() and not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"not a model folder: {path} (no config.json)")


def _needs_remote_code(source: str | None) -> str | None:
    """For a local model folder whose ``config.json`` maps classes to the folder's own Python code
    (``auto_map``) and whose model type this transformers does not know: what it maps. None otherwise
    (hub ids, and tokenizers, are left to transformers, asked with ``trust_remote_code=False``)."""
    import json

    from transformers import CONFIG_MAPPING

    path = Path(str(source)).expanduser() if source else None
    if path is None or not (path / "config.json").is_file():
        return None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # transformers names a damaged config itself
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map or config.get("model_type") in CONFIG_MAPPING:
        return None
    shown = ", ".join(f"{k} -> {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict) else str(auto_map)
    return f"{path / 'config.json'} has model_type {config.get('model_type')!r}, which transformers does not know, " \
        f"and maps it to the folder's own code (auto_map: {shown})"


def _remote_code_refused(source, why: str) -> ValueError:
    return ValueError(f"model {source} needs custom code to load: {why}. mgpp runs a model's own code only with "
                      "model.trust_remote_code=true (read that code first); it never asks")


def load_model(model_cfg: DictConfig, auto_class, **kwargs) -> tuple[PreTrainedModel, Any]:
    """``auto_class`` model (pretrained, or random init from ``model.config``) and its tokenizer.

    A model's own code (``auto_map``) runs only with ``model.trust_remote_code=true``; without it a model
    that needs it is refused naming that key, never with transformers' interactive prompt."""
    for source in (model_cfg.pretrained, model_cfg.tokenizer):
        _check_local_model(source)
    trust = bool(model_cfg.get("trust_remote_code", False))
    if not trust:
        for source in (model_cfg.tokenizer or model_cfg.pretrained, model_cfg.pretrained):
            why = _needs_remote_code(source)
            if why:
                raise _remote_code_refused(source, why)
    tokenizer_source = model_cfg.tokenizer or model_cfg.pretrained
    if tokenizer_source is None:
        raise ValueError(f"model {model_cfg.name!r} needs model.tokenizer when it has no model.pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise _remote_code_refused(tokenizer_source, "its tokenizer is defined by its own code") from None
    try:
        if model_cfg.pretrained is not None:
            try:
                model = auto_class.from_pretrained(model_cfg.pretrained, trust_remote_code=trust, **kwargs)
            except ValueError as err:
                if "trust_remote_code" not in str(err):
                    raise
                raise _remote_code_refused(model_cfg.pretrained, "its model is defined by its own code") from None
        else:
            fields = OmegaConf.to_container(model_cfg.config, resolve=True)
            config = AutoConfig.for_model(**fields, **kwargs)
            if config.vocab_size < len(tokenizer):
                raise ValueError(f"model.config.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                                 f"{len(tokenizer)} tokens")
            model = auto_class.from_config(config)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise ValueError(f"model={model_cfg.name} has no {auto_class.__name__} head: this task needs another "
                         "architecture (summarization: model=bart_large or tiny_bart; QA and GLUE: BERT or "
                         "DeBERTa models)") from None
    log.info("model %s: %s, %.1fM parameters", model_cfg.name, type(model).__name__, model.num_parameters() / 1e6)
    return model, tokenizer


@dataclass
class Task:
    """Interface of a task family; subclasses add their own settings as fields."""

    #: what a metric value is multiplied by to read in percent, as the paper prints it: 100 for
    #: fractions (GLUE accuracy, F1, correlations), 1 for scores already in percent (SQuAD EM/F1,
    #: ROUGE) and for quantities that are not percentages at all (MLM loss, perplexity)
    metric_scale: ClassVar[float] = 100.0

    name: str
    #: names of the metrics :meth:`evaluate` returns (without split prefixes)
    metrics: list[str] = field(default_factory=list)
    #: the metric a sweep optimises and the report leads with
    main_metric: str = ""

    def __post_init__(self) -> None:
        if self.main_metric not in self.metrics:
            raise ValueError(f"main_metric={self.main_metric!r} is not one of metrics={list(self.metrics)}")

    def training_arguments(self, **kwargs) -> TrainingArguments:
        """The ``TrainingArguments`` of a run (a task may need a subclass or add settings)."""
        return TrainingArguments(**kwargs)

    def build_model(self, model_cfg: DictConfig) -> tuple[PreTrainedModel, Any]:
        raise NotImplementedError

    def datasets(self, tokenizer, data_dir: str | None, max_train_samples: int | None,
                 max_eval_samples: int | None, seed: int) -> tuple[Any, dict[str, Any]]:
        """Tokenized training set and ``{split name: eval set}``."""
        raise NotImplementedError

    def make_trainer(self, model, args, train_set, eval_sets: dict, tokenizer) -> Trainer:
        raise NotImplementedError

    def evaluate(self, trainer: Trainer, eval_sets: dict) -> dict[str, float]:
        """Final metrics over every eval split, prefixed ``eval_`` (``eval_<split>_`` for several)."""
        metrics: dict[str, float] = {}
        for split, dataset in eval_sets.items():
            prefix = "eval" if len(eval_sets) == 1 else f"eval_{split}"
            metrics |= trainer.evaluate(dataset, metric_key_prefix=prefix)
        return metrics
