"""Model and tokenizer from a ``model`` config: pretrained (hub id or folder) or random init."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

log = logging.getLogger(__name__)

__all__ = ["build_classifier"]


def build_classifier(model_cfg: DictConfig, num_labels: int) -> tuple[PreTrainedModel, object]:
    """Sequence classifier with ``num_labels`` outputs (1: regression) and its tokenizer."""
    tokenizer_source = model_cfg.tokenizer or model_cfg.pretrained
    if tokenizer_source is None:
        raise ValueError(f"model {model_cfg.name!r} needs model.tokenizer when it has no model.pretrained")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if model_cfg.pretrained is not None:
        model = AutoModelForSequenceClassification.from_pretrained(model_cfg.pretrained, num_labels=num_labels)
    else:
        fields = OmegaConf.to_container(model_cfg.config, resolve=True)
        config = AutoConfig.for_model(**fields, num_labels=num_labels)
        model = AutoModelForSequenceClassification.from_config(config)
        if config.vocab_size < len(tokenizer):
            raise ValueError(f"model.config.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                             f"{len(tokenizer)} tokens")
    log.info("model %s: %s, %.1fM parameters", model_cfg.name, type(model).__name__, model.num_parameters() / 1e6)
    return model, tokenizer
