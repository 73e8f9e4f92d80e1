"""Which sparsity pattern a CPU kernel can use: torch's own sparse products against the dense linear.

For issue 30 (a pruned model really faster on a CPU). One linear layer, batch 1 x 128 tokens, 2 threads,
in the kernel's fast form ``W @ X^T`` (activations feature-major; the transposes around it are not
timed): dense ``F.linear`` against CSR (unstructured) and BSR with the block patterns that
``pruning=block`` produces, at 80/90/95% of the weights zero, blocks zeroed at random (the pattern, not
the values, decides the speed). MiniLM-L6's and BERT-base's three layer shapes. A pattern torch cannot
multiply on this machine (MKL's BSR takes square blocks only) is reported as such.

    python benchmarks/bench_block_kernels.py        # ~2 minutes on 2 cores; nothing else should run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_io import write_results  # noqa: E402

TOKENS = 128
SHAPES = {"MiniLM q/k/v/attn-out": (384, 384), "MiniLM ffn-in": (1536, 384), "MiniLM ffn-out": (384, 1536),
          "BERT-base q/k/v/attn-out": (768, 768), "BERT-base ffn-in": (3072, 768), "BERT-base ffn-out": (768, 3072)}
PATTERNS = [(1, 1), (1, 4), (4, 1), (16, 1), (4, 4)]  # (rows, cols) of a block; 1x1: unstructured (CSR)


def median_seconds(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def product(weight: torch.Tensor, rows: int, cols: int):
    """The sparse product ``weight @ xt`` torch offers for this pattern, or the reason it has none."""
    if (rows, cols) == (1, 1):
        csr = weight.to_sparse_csr()
        return lambda xt: torch.sparse.mm(csr, xt)
    bsr = weight.to_sparse_bsr((rows, cols))
    probe = torch.zeros(weight.shape[1], 1)
    try:
        bsr @ probe
    except RuntimeError as err:
        return str(err).split("\n")[0][:80]
    return lambda xt: bsr @ xt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_out, data = [], []
    for name, (out_features, in_features) in SHAPES.items():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(TOKENS, in_features, generator=gen)
        xt = x.t().contiguous()
        dense_weight = torch.randn(out_features, in_features, generator=gen)
        dense = median_seconds(lambda: torch.nn.functional.linear(x, dense_weight), args.repeats)
        for sparsity in (0.8, 0.9, 0.95):
            cells = []
            for rows, cols in PATTERNS:
                keep = torch.rand(out_features // rows, in_features // cols, generator=gen) >= sparsity
                weight = dense_weight * keep.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
                run = product(weight, rows, cols)
                if isinstance(run, str):
                    cells.append("n/a")
                    data.append({"shape": name, "sparsity": sparsity, "pattern": f"{rows}x{cols}", "error": run})
                    continue
                torch.testing.assert_close(run(xt), weight @ xt, rtol=1e-4, atol=1e-3)
                seconds = median_seconds(lambda: run(xt), args.repeats)
                cells.append(f"{dense / seconds:.2f}x")
                data.append({"shape": name, "sparsity": sparsity, "pattern": f"{rows}x{cols}",
                             "dense_s": dense, "sparse_s": seconds, "speedup": dense / seconds})
            rows_out.append(f"| {name} ({out_features}x{in_features}) | {sparsity:.0%} | {dense * 1e3:.3f} | "
                            + " | ".join(cells) + " |")
            print(rows_out[-1], flush=True)
    unsupported = sorted({d["error"] for d in data if "error" in d})
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    markdown = "\n".join([
        f"# Sparse kernels torch offers on the CPU, one linear layer ({args.threads} threads)", "",
        f"Measured {when} on {platform.platform()}; torch {torch.__version__}.",
        f"Command: `python benchmarks/bench_block_kernels.py --repeats {args.repeats} --threads {args.threads}`", "",
        f"Batch 1 x {TOKENS} tokens, `W @ X^T` (feature-major activations; transposes not timed); speed-up of the "
        "sparse product over dense `F.linear`, median of the repeats; blocks rows x cols of the (out, in) weight.", "",
        "| layer | zero | dense ms | 1x1 (CSR) | 1x4 | 4x1 | 16x1 | 4x4 (BSR) |",
        "|---|---|---|---|---|---|---|---|", *rows_out, "",
        *(f"n/a: {reason}" for reason in unsupported)])
    out = write_results(ROOT / "experiments/results/inference", "block_kernels_cpu", data, markdown)
    print(f"\n{markdown}\n\nwritten to {out}")


if __name__ == "__main__":
    main()
