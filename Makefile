# Everything a fresh clone needs: `make train`, `make test`, `make bench`.
# The virtual environment lives in .venv and is (re)built when pyproject.toml changes.
# TORCH pins the build: on CPU machines that carry the local 2.13.0 CPU wheel pip takes it;
# on a GPU machine the same pin brings the CUDA build from PyPI.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# What `make train` runs: MiniLM-L6 on SST-2 with MGPP to 90% sparsity, on a fixed 8,000-example
# subset for 2 epochs so that it finishes in minutes on a CPU. Add overrides with ARGS="...".
TRAIN_ARGS ?= max_train_samples=8000 trainer.num_train_epochs=2
ARGS ?=
# What `make smoke` runs: the same model, task and method for 60 steps on a 1,024-example subset, at 50%
# (the prior at its full-set strength, n = 67,349), with a 256-example dev set: about a minute on 2 cores,
# printing what a real run prints.
SMOKE_ARGS ?= max_train_samples=1024 max_eval_samples=256 train_size=67349 sparsity=0.5 trainer.max_steps=60 \
	trainer.per_device_train_batch_size=16 trainer.learning_rate=2e-4 trainer.logging_steps=10 trainer.eval_steps=0.5 \
	logger=[jsonl] save_model=false

# What `make test-fast` runs: the engine (priors, schedules, pruner, callback, optimizer) and the config
# files, in under a minute (not the torch.compile test); `make test` runs everything CI runs, a worker per core.
FAST_TESTS ?= tests/test_priors.py tests/test_schedules.py tests/test_pruning.py tests/test_callback.py \
	tests/test_optimizer.py tests/test_config.py tests/test_metrics.py tests/test_paired.py tests/test_docs.py

.PHONY: install smoke train test test-fast bench bench-inference pipeline study study-report clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,offline,tensorboard,sweeps]"
	touch $(STAMP)

smoke: install
	$(PY) -m mgpp.train $(SMOKE_ARGS) $(ARGS)

train: install
	$(PY) -m mgpp.train $(TRAIN_ARGS) $(ARGS)

test: install
	$(PY) -m pytest -q -n auto --dist worksteal

test-fast: install
	$(PY) -m pytest -q -n auto --dist worksteal -m "not compiles" $(FAST_TESTS)

bench: install
	$(PY) benchmarks/bench_engine.py

# Sparse CPU inference: per-layer and end-to-end latency, dense vs sparse, MiniLM-L6 and BERT-base
# shapes at 0/80/90/95% (about 10 minutes on 2 cores; nothing else should run meanwhile).
bench-inference: install
	$(PY) benchmarks/bench_inference.py

# The whole path a user runs, stage by stage: make train's run -> export -> load -> sparse inference,
# dense against sparse latency and SST-2 dev accuracy (benchmarks/bench_pipeline.py)
pipeline: install
	$(PY) benchmarks/bench_pipeline.py --train-args "$(TRAIN_ARGS)" $(ARGS)

# The ablation study (MiniLM-L6; dense, GMP, L2, PA, MGPP x 3 seeds; MRPC 90/80%, SST-2 90%, then
# STS-B, RTE, SST-2 80%: many hours on 2 cores), then its report. Resumable: run it again after an
# interruption. (The earlier 200-step study: experiments/results/study_minilm/run.sh.)
study: install
	experiments/results/study_ablation/run.sh

# Only the study's tables and figures, from the runs already in runs/ and followup/ (about a minute
# on 2 cores; trains nothing).
study-report: install
	REPORT_ONLY=1 experiments/results/study_ablation/run.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
