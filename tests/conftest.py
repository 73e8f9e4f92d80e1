"""Shared fixtures: tiny random models of each architecture, and a Trainer runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

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

try:  # absl's logging handler (rouge-score brings it) closes its stream on logging.shutdown unless that stream is
    # the sys.stderr of the moment; Hydra's job logging shuts handlers down at each in-process run, while
    # train_in_process redirects sys.stderr, so it would close pytest's capture. Tests only: detach, never close.
    import logging as _logging

    from absl.logging import PythonHandler as _AbslHandler

    _AbslHandler.close = _logging.StreamHandler.close
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[1]
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


class Finished(NamedTuple):
    """What a finished ``python -m mgpp.train`` gave: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def train_in_process(*args: str) -> Finished:
    """``python -m mgpp.train *args`` run inside the test's process: the same entrypoint, command-line
    checks and Hydra, without a new interpreter's imports (torch and transformers: ~7 s a run).
    For tests of what a run does; tests of the process itself (exit codes of a shell, signals) spawn it."""
    import contextlib
    import io
    import logging
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from mgpp.train import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {name: (lg.level, lg.propagate, list(lg.handlers))
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    import random

    import numpy as np
    from hydra.core.hydra_config import HydraConfig

    out, err, argv, cwd, environ = io.StringIO(), io.StringIO(), sys.argv, os.getcwd(), dict(os.environ)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    code = 0
    GlobalHydra.instance().clear()
    try:
        os.chdir(ROOT)
        sys.argv = ["mgpp.train", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(cwd)
        os.environ.clear()  # what the run set (W&B's service token, ...) must not reach later tests' subprocesses
        os.environ.update(environ)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # a later compose must not resolve ${hydra:...} to this run
        for handler in root.handlers:  # the run's handlers (Hydra's job logging; absl's, which rouge-score adds)
            if handler not in handlers and isinstance(handler, logging.FileHandler):
                handler.close()  # the job log's file; other handlers are only detached (absl's close() closes its
                # stream when it is not the sys.stderr of the moment: pytest's capture, once restored)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, (lvl, propagate, own) in loggers.items():  # levels quiet_libraries set, handlers Hydra added
            lg = logging.getLogger(name)
            lg.setLevel(lvl)
            lg.propagate = propagate
            lg.handlers[:] = own
    return Finished(code, out.getvalue(), err.getvalue())
