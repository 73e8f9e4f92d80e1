"""ROUGE on hand cases; XSum summarization end to end on a tiny BART."""

import json

import pytest

from mgpp.metrics import rouge
from mgpp.tasks.data import find_data_dir

from test_train import QUICK, run_train

XSUM = find_data_dir("summarization")


def test_rouge_identical_and_disjoint():
    assert rouge(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeLsum": 100.0})
    assert rouge(["dogs bark loudly"], ["the cat sat"]) == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0})


def test_rouge_partial_overlap():
    got = rouge(["the cat sat"], ["the cat ran"])
    assert got["rouge1"] == pytest.approx(100 * 2 / 3)  # the, cat
    assert got["rouge2"] == pytest.approx(50.0)  # "the cat" of two bigrams each
    assert got["rougeLsum"] == pytest.approx(100 * 2 / 3)  # LCS "the cat"


def test_rouge_lsum_splits_sentences():
    # Summary-level LCS over sentences: swapped sentences still match fully (plain ROUGE-L would not).
    got = rouge(["Alpha beta gamma. Delta epsilon zeta."], ["Delta epsilon zeta. Alpha beta gamma."])
    assert got["rougeLsum"] == pytest.approx(100.0)
    assert got["rouge1"] == pytest.approx(100.0)


def test_rouge_averages_over_examples():
    got = rouge(["a b", "c d"], ["a b", "x y"])
    assert got["rouge1"] == pytest.approx(50.0)


@pytest.mark.skipif(XSUM is None, reason="no local shared/data/summarization")
def test_xsum_end_to_end_on_tiny_bart(tmp_path):
    run_train(*QUICK, "model=tiny_bart", "task=xsum_local", "method=mgpp", "sparsity=0.7", "logger=[jsonl]",
              "task.max_source_length=96", "task.max_target_length=16", "task.num_beams=2",
              "max_train_samples=64", "max_eval_samples=8", "trainer.max_steps=12", "trainer.eval_steps=6",
              "trainer.per_device_eval_batch_size=8", "report.histogram_every=0", f"hydra.run.dir={tmp_path}")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ["eval_rouge1", "eval_rouge2", "eval_rougeLsum"]:
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["sparsity"] == pytest.approx(0.7, abs=1e-4)
    layers = (tmp_path / "layer_sparsity.csv").read_text()
    assert "model.encoder.layers.0.fc1.weight" in layers and "model.decoder.layers.1.encoder_attn.q_proj.weight" in layers
    assert "shared" not in layers and "lm_head" not in layers
