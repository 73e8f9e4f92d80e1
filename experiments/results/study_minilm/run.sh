#!/usr/bin/env bash
# The small-scale study, as run on the project's 2-core machine: two jobs at a time, one thread each.
# Resumable: rerun this script after an interruption; finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python -m mgpp.train -m experiment=study_minilm hydra/launcher=local_parallel
.venv/bin/python -m mgpp.train -m experiment=study_minilm_n67k hydra/launcher=local_parallel
.venv/bin/python -m mgpp.report experiments/results/study_minilm/runs experiments/results/study_minilm/runs_n67k \
    --out experiments/results/study_minilm --fig2a-methods mgpp,l2,gmp
