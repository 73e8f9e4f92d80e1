"""Decoder-only models: GPT-2 (Conv1D, tied LM head) and Llama-style targets; causal-LM runs end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mgpp.pruning import TargetSelector, num_to_prune
from test_train import QUICK, needs_glue, read_jsonl, run_train


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64))


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def test_gpt2_targets_are_the_attention_and_mlp_projections():
    targets = TargetSelector().select(tiny_gpt2())
    assert targets.names == [f"transformer.h.{i}.{m}.weight" for i in range(2)
                             for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_llama_targets_are_the_attention_and_mlp_projections():
    targets = TargetSelector().select(tiny_llama())
    assert targets.names == [f"model.layers.{i}.{m}.weight" for i in range(2)
                             for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


# The corpus (the XSum documents) lives in the same shared/data folder as GLUE.
@needs_glue
@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_llama"])
def test_causal_lm_run_prunes_a_decoder_to_its_exact_sparsity(tmp_path, model):
    run_train(*QUICK, f"model={model}", "task=clm_local", "method=mgpp", "sparsity=0.8", "logger=[jsonl]",
              "task.max_length=32", f"hydra.run.dir={tmp_path}", "resume=false")  # the 30,522-way head dominates
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_steps"] == 24 and metrics["eval_perplexity"] > 1.0
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    targets = TargetSelector().select(pruned)
    assert sum(targets.zeros_per_tensor()) == num_to_prune(0.8, targets.numel)
    embedding = pruned.get_input_embeddings().weight
    # embeddings (and GPT-2's tied LM head) untouched: no zeros beyond Llama's padding row (pad_token_id=0)
    assert int((embedding[1:] == 0).sum()) == 0
    if model == "tiny_gpt2":
        assert pruned.lm_head.weight.data_ptr() == embedding.data_ptr()
    else:
        assert int((pruned.lm_head.weight == 0).sum()) == 0
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    evals = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "scalars" and "eval/loss" in r]
    assert [r["step"] for r in evals][:2] == [12, 24]
