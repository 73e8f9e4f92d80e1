"""Per-example predictions in the run folder, MRPC's labelled test set as a verdict split, and a
fixed slice of train held out for selection."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mgpp.predictions import final_predictions, read_predictions
from mgpp.tasks.glue_data import find_glue_dir

ROOT = Path(__file__).resolve().parents[1]
needs_glue = pytest.mark.skipif(find_glue_dir() is None, reason="no local GLUE folder (../shared/data/glue)")


@needs_glue
def test_every_evaluation_writes_its_predictions_and_mrpc_has_a_test_split(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mgpp.train", "model=tiny_bert", "task=mrpc", "method=gmp",
                           "task.eval_splits=[validation,test]", "max_train_samples=64", "max_eval_samples=40",
                           "trainer.max_steps=8", "trainer.eval_steps=4", "trainer.per_device_train_batch_size=8",
                           "logger=[jsonl]", "save_model=false", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"eval_validation_accuracy", "eval_test_accuracy", "eval_test_f1"} <= set(metrics)
    assert sorted(p.name for p in (tmp_path / "predictions" / "validation").iterdir()) == \
        ["step0000004.csv", "step0000008.csv"]  # the in-loop evaluations, the last one again at the end
    final = final_predictions(tmp_path)
    assert set(final) == {"validation", "test"}
    test = read_predictions(final["test"])
    assert len(test["id"]) == 40 and len(set(test["id"])) == 40 and test["id"].max() < 1725
    assert set(np.unique(test["label"])) <= {0.0, 1.0} and set(np.unique(test["prediction"])) <= {0.0, 1.0}
    accuracy = float(np.mean(test["label"] == test["prediction"]))
    assert accuracy == pytest.approx(metrics["eval_test_accuracy"])  # the file is what the metric was computed on


@needs_glue
def test_a_held_out_slice_of_train_is_the_same_for_every_seed_and_never_trained_on():
    from transformers import AutoTokenizer

    from mgpp.config import offline_model_path
    from mgpp.tasks.glue import GlueTask

    tokenizer = AutoTokenizer.from_pretrained(offline_model_path())
    task = GlueTask(name="rte", text_keys=["sentence1", "sentence2"], metrics=["accuracy"], main_metric="accuracy",
                    eval_splits=["heldout", "validation"], heldout=200)
    train1, evals1 = task.datasets(tokenizer, None, None, None, seed=1)
    train2, evals2 = task.datasets(tokenizer, None, None, None, seed=2)
    assert len(evals1["heldout"]) == 200 and len(train1) == 2490 - 200 and len(evals1["validation"]) == 277
    assert evals1["heldout"]["idx"] == evals2["heldout"]["idx"]  # a fixed slice, whatever the run's seed
    from mgpp.tasks.glue import held_out, numbered
    from mgpp.tasks.glue_data import load_glue

    rest, held = held_out(numbered(load_glue("rte", splits=["train"])["train"]), 200)
    assert held["idx"] == evals1["heldout"]["idx"] and not set(held["idx"]) & set(rest["idx"])
    assert len(set(rest["idx"]) | set(held["idx"])) == 2490  # nothing lost, nothing twice
    with pytest.raises(ValueError, match="heldout"):
        GlueTask(name="rte", text_keys=["sentence1", "sentence2"], metrics=["accuracy"], main_metric="accuracy",
                 eval_splits=["heldout"], heldout=0)
