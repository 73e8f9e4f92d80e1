#!/usr/bin/env bash
# The ablation study (experiments/study_ablation.yaml) as run on the project's 2-core machine: two runs
# at a time, one thread each, in priority order (the required blocks first). Resumable: rerun it after
# an interruption; finished runs (metrics.json) are skipped, interrupted ones continue from their
# last checkpoint. STAGES="mrpc90 sst2_90" runs only those blocks.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}
sweep() { "$PY" -m mgpp.train -m experiment=study_ablation hydra/launcher=local_parallel "$@"; }
PRUNED=gmp,l2,pa,mgpp
declare -A BLOCK=(
  [mrpc90]="task=mrpc method=$PRUNED sparsity=0.9"
  [mrpc_dense]="task=mrpc method=dense sparsity=0.0"
  [sst2_90]="task=sst2 method=$PRUNED sparsity=0.9"
  [sst2_dense]="task=sst2 method=dense sparsity=0.0"
  [mrpc80]="task=mrpc method=$PRUNED sparsity=0.8"
  [stsb90]="task=stsb method=$PRUNED sparsity=0.9"
  [stsb_dense]="task=stsb method=dense sparsity=0.0"
  [rte90]="task=rte method=$PRUNED sparsity=0.9"
  [rte_dense]="task=rte method=dense sparsity=0.0"
  [sst2_80]="task=sst2 method=$PRUNED sparsity=0.8"
  [mrpc70]="task=mrpc method=$PRUNED sparsity=0.7"
)
STAGES=${STAGES:-"mrpc90 mrpc_dense sst2_90 sst2_dense mrpc80 stsb90 stsb_dense rte90 rte_dense sst2_80"}
for stage in $STAGES; do
  echo "== $stage: ${BLOCK[$stage]} ($(date -u +%FT%TZ))"
  # shellcheck disable=SC2086
  sweep ${BLOCK[$stage]} seed=1,2,3
done
"$PY" -m mgpp.report study_ablation experiments/results/study_ablation/runs --out experiments/results/study_ablation
