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

.PHONY: install train test bench study clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,offline,tensorboard,sweeps]"
	touch $(STAMP)

train: install
	$(PY) -m mgpp.train $(TRAIN_ARGS) $(ARGS)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_engine.py

# The measured small-scale study (MiniLM-L6, SST-2/MRPC/RTE/STS-B at 90%, 5 methods x 2 seeds, about
# 2 hours on 2 cores), then its report. Resumable: run it again after an interruption.
study: install
	experiments/results/study_minilm/run.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
