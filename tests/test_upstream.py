"""Upstream (MLM) pruning, then sparse transfer on GLUE with the mask fixed."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from mgpp.pruning import TargetSelector, num_to_prune
from mgpp.tasks.data import find_data_dir
from mgpp.pruning import load_mask, save_mask

from test_train import QUICK, run_train

DATA = find_data_dir("")
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "summarization").is_dir() or not (DATA / "glue").is_dir(),
                                reason="no local shared/data with summarization/ and glue/")


def test_mask_round_trip(tmp_path):
    params = [torch.randn(5, 7), torch.randn(3, 3)]
    params[0][0, :4] = 0
    params[1][2] = 0
    save_mask(["a.weight", "b.weight"], params, tmp_path / "mask.safetensors")
    mask = load_mask(tmp_path / "mask.safetensors")
    assert torch.equal(mask["a.weight"], params[0] == 0) and torch.equal(mask["b.weight"], params[1] == 0)


@needs_data
def test_upstream_then_sparse_transfer_keeps_every_pruned_weight_zero(tmp_path):
    upstream, transfer = tmp_path / "upstream", tmp_path / "transfer"
    run_train(*QUICK, "model=tiny_bert", "task=mlm_local", "method=mgpp", "sparsity=0.8", "logger=[jsonl]",
              "max_train_samples=160", "trainer.eval_steps=12", "task.max_length=32",  # the 30,522-way head dominates
              f"hydra.run.dir={upstream}")
    up_metrics = json.loads((upstream / "metrics.json").read_text())
    assert up_metrics["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert up_metrics["eval_perplexity"] > 1.0
    mask = load_mask(upstream / "model" / "mask.safetensors")

    run_train(*QUICK, "model=local", f"model.pretrained={upstream / 'model'}", "task=rte", "method=sparse_transfer",
              "sparsity=0.8", "logger=[jsonl]", f"hydra.run.dir={transfer}")
    model = AutoModelForSequenceClassification.from_pretrained(transfer / "model")
    targets = TargetSelector().select(model)
    assert set(targets.names) == set(mask)
    for name, param in zip(targets.names, targets.params):
        assert torch.equal(param.detach() == 0, mask[name]), name  # exactly the upstream zeros
    assert sum(targets.zeros_per_tensor()) == num_to_prune(0.8, targets.numel)
    # ... while the transfer did train the surviving weights
    before = AutoModelForSequenceClassification.from_pretrained(upstream / "model")
    moved = dict(before.named_parameters())[targets.names[0]].detach()
    assert not torch.equal(moved, targets.params[0].detach())
