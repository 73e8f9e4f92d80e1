"""Shared fixtures: tiny random models of each architecture, and a Trainer runner."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: one thread each, subprocesses too
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB, HIDDEN, LAYERS, HEADS, FFN = 128, 32, 2, 2, 64


def tiny_bert(num_labels: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg)


def tiny_deberta() -> DebertaV2ForSequenceClassification:
    torch.manual_seed(0)
    cfg = DebertaV2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, relative_attention=True,
        pos_att_type=["p2c", "c2p"], share_att_key=True, position_buckets=16, max_relative_positions=32, num_labels=2,
    )
    return DebertaV2ForSequenceClassification(cfg)


def tiny_bart() -> BartForConditionalGeneration:
    torch.manual_seed(0)
    cfg = BartConfig(
        vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN, max_position_embeddings=64,
    )
    return BartForConditionalGeneration(cfg)


@pytest.fixture
def bert():
    return tiny_bert()
