"""Tables and figures from finished runs: ``python -m mgpp.report <run or sweep dirs> --out <dir>``.

- :mod:`.runs` finds runs in output folders (``config.yaml`` + ``metrics.json`` + ``log.jsonl``)
  and, when it is reachable, in a W&B project;
- :mod:`.tables` groups them by task, method and sparsity (seeds averaged: mean ± std) in the
  paper's layout, with the paper's numbers from the experiment file beside ours;
- :mod:`.figures` draws the paper's Fig. 1, 2a, 2b and A1 as PNG.
"""

from .runs import Run, find_runs, wandb_runs
from .tables import Row, metric_columns, summarize, to_csv, to_markdown

__all__ = ["Run", "find_runs", "wandb_runs", "Row", "metric_columns", "summarize", "to_csv", "to_markdown"]
