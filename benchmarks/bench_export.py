"""File sizes of the sparse export: MiniLM-L6 pruned to 80/90/95%, values in fp32, fp16 and bf16.

The model is pruned one-shot by global magnitude (what the sizes depend on is the number of kept
weights, not how they were chosen), saved with ``save_pretrained`` and exported with
``mgpp.export``; each export is loaded back and compared with the pruned model.
Results go to ``experiments/results/inference/export_sizes.{json,md}``.

    python benchmarks/bench_export.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_inference import minilm  # noqa: E402
from results_io import write_results  # noqa: E402
from mgpp.export import export_sparse, load_sparse_state_dict  # noqa: E402
from mgpp.pruning import GlobalPruner, TargetSelector  # noqa: E402

MIB = 1 << 20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", default="0.8,0.9,0.95")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "inference"))
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    rows = []
    md = ["| sparsity | values | pruned matrices: dense MiB | sparse MiB | ratio | whole file: model.safetensors MiB | "
          "model.sparse.safetensors MiB | ratio | reload |", "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            model = minilm().eval()
            GlobalPruner().prune_(TargetSelector().select(model).params, sparsity)
            dense_dir = Path(tmp) / f"dense_{sparsity}"
            model.save_pretrained(dense_dir)
            dense_file = (dense_dir / "model.safetensors").stat().st_size
            reference = model.state_dict()
            for values in ("fp32", "fp16", "bf16"):
                out = Path(tmp) / f"sparse_{sparsity}_{values}"
                s = export_sparse(dense_dir, out, values=values)
                back = load_sparse_state_dict(out)
                exact = all(torch.equal(back[k], v) for k, v in reference.items() if k in back)
                row = {"sparsity": sparsity, "values": values, "pruned_dense_bytes": s.pruned_dense_bytes,
                       "pruned_bytes": s.pruned_bytes, "dense_file_bytes": dense_file, "sparse_file_bytes": s.file_bytes,
                       "bit_identical": exact, "pruned_tensors": s.num_pruned_tensors}
                rows.append(row)
                line = (f"| {sparsity:g} | {values} | {s.pruned_dense_bytes / MIB:.2f} | {s.pruned_bytes / MIB:.2f} | "
                        f"{s.pruned_bytes / s.pruned_dense_bytes:.3f}x | {dense_file / MIB:.2f} | {s.file_bytes / MIB:.2f} | "
                        f"{s.file_bytes / dense_file:.3f}x | {'bit-identical' if exact else 'values rounded'} |")
                md.append(line)
                print(line, flush=True)
    out = write_results(args.out, "export_sizes", rows, "\n".join(md))
    print(f"wrote {out}/export_sizes.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
