"""The whole path a user runs, timed stage by stage: train (``make train``) -> export -> load -> sparse inference.

Prints the wall time of each stage, the export's size against the dense model's, the dense and sparse
latencies at batch 1 and batch 32 (128 tokens), and the SST-2 dev accuracy through the dense and the
sparse model (their predictions should agree example for example). Results go to
``experiments/results/inference/pipeline_cpu.{json,md}``.

    make pipeline                                   # trains first (make train's settings), then the rest
    python benchmarks/bench_pipeline.py --model-dir outputs/.../model   # a model already trained
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402
from mgpp.export import export_sparse, load_sparse  # noqa: E402
from mgpp.inference import sparsify_for_inference, time_call  # noqa: E402
from mgpp.tasks.glue_data import load_glue  # noqa: E402

SEQ = 128


def train(run_dir: Path, overrides: list[str]) -> Path:
    """A run of ``python -m mgpp.train`` with ``overrides`` into ``run_dir``; returns its model folder."""
    command = [sys.executable, "-m", "mgpp.train", *overrides, f"hydra.run.dir={run_dir}", "logger=[jsonl]"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return run_dir / "model"


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


@torch.inference_mode()
def dev_predictions(model, tokenizer, sentences, batch_size=32) -> torch.Tensor:
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=SEQ, return_tensors="pt")
        out.append(model(**enc).logits.argmax(-1))
    return torch.cat(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="a trained pruned model folder (a run's model/); default: train one")
    parser.add_argument("--train-args", help="overrides of the training run when there is no --model-dir "
                        "(make pipeline passes make train's TRAIN_ARGS)")
    parser.add_argument("--work", help="where the run and the export go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--min-speedup", type=float, default=1.05, help="sparsify_for_inference's min_speedup")
    parser.add_argument("--batches", default="1,32", help="batch sizes (x 128 tokens) to sparsify for and time")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "inference"))
    args = parser.parse_args(argv)
    if args.model_dir is None and args.train_args is None:
        parser.error("give --model-dir (a trained model) or --train-args (the run to train first; "
                     "`make pipeline` passes make train's)")
    warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
    hf_logging.set_verbosity_error()
    work = Path(args.work or tempfile.mkdtemp(prefix="mgpp_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    stages, md = {}, []

    def stage(name, fn):
        start = time.perf_counter()
        value = fn()
        stages[name] = time.perf_counter() - start
        print(f"{name}: {stages[name]:.1f} s", flush=True)
        return value

    model_dir = (Path(args.model_dir) if args.model_dir
                 else stage("train", lambda: train(work / "run", args.train_args.split())))
    torch.set_num_threads(args.threads)
    export_dir = work / "export"
    stage("export", lambda: export_sparse(model_dir, export_dir, replace=True))
    sparse = stage("load", lambda: load_sparse(export_dir).eval())
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reports, latencies, sparse_models = {}, {}, {}
    batches = [int(b) for b in args.batches.split(",")]
    for batch in batches:
        ids = torch.randint(1000, 20000, (batch, SEQ), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        model = load_sparse(export_dir).eval() if batch != batches[0] else sparse  # chosen for its own batch size
        sparse_models[batch] = model
        reports[batch] = stage(f"sparsify (batch {batch})",
                               lambda m=model, b=batch: sparsify_for_inference(m, tokens=b * SEQ, seq_len=SEQ,
                                                                               min_speedup=args.min_speedup))
        run = lambda m: m(input_ids=ids, attention_mask=mask).logits  # noqa: E731
        reps = args.reps if batch == 1 else max(3, args.reps // 3)
        dense_ms = time_call(lambda: run(dense), reps, warmup=1) * 1e3
        sparse_ms = time_call(lambda m=model: run(m), reps, warmup=1) * 1e3
        latencies[batch] = {"dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms}
        print(f"batch {batch} x {SEQ}: dense {dense_ms:.1f} ms, sparse {sparse_ms:.1f} ms ({dense_ms / sparse_ms:.2f}x)",
              flush=True)
    dev = load_glue("sst2", splits=["validation"])["validation"]
    labels = torch.tensor(dev["label"])
    dense_pred = stage("dev set, dense", lambda: dev_predictions(dense, tokenizer, dev["sentence"]))
    accuracy = {"dense": float((dense_pred == labels).float().mean())}
    for batch, model in sparse_models.items():  # each sparse model (chosen for its batch) on real, padded inputs
        pred = stage(f"dev set, sparse (chosen for batch {batch})",
                     lambda m=model: dev_predictions(m, tokenizer, dev["sentence"]))
        accuracy[f"sparse_batch{batch}"] = float((pred == labels).float().mean())
        accuracy[f"agree_batch{batch}"] = float((pred == dense_pred).float().mean())
    sizes = {"model_mib": folder_mib(model_dir), "export_mib": folder_mib(export_dir)}
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "model_dir": str(model_dir)}
    md += [f"Measured {env['date']}, torch {env['torch']}, {env['threads']} threads; one command "
           f"(`make pipeline`), stages timed as wall time.", "",
           "| stage | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in stages.items()], "",
           f"Model folder {sizes['model_mib']:.1f} MiB, export {sizes['export_mib']:.1f} MiB.", "",
           "| batch x 128 tokens | dense ms | sparse ms | speed-up | encoder feature-major |", "|---|---|---|---|---|",
           *[f"| {b} | {v['dense_ms']:.1f} | {v['sparse_ms']:.1f} | {v['speedup']:.2f}x | "
             f"{'yes' if reports[b].encoders else 'no'} ({len(reports[b].swapped)} of {len(reports[b].layers)} "
             "layers sparse) |" for b, v in latencies.items()], "",
           f"SST-2 dev ({len(labels)} sentences, batches of 32 padded to their longest): dense accuracy "
           f"{accuracy['dense']:.4f}; " + "; ".join(
               f"the model sparsified for batch {b} ({len(reports[b].swapped)} of {len(reports[b].layers)} layers "
               f"sparse) {accuracy[f'sparse_batch{b}']:.4f}, the same prediction as dense on "
               f"{accuracy[f'agree_batch{b}']:.2%}" for b in batches) + ".", "", f"Layer choices at batch {batches[0]}:", "", "```",
           reports[batches[0]].table(), "```"]
    print(f"SST-2 dev accuracy: {accuracy}")
    out = write_results(args.out, "pipeline_cpu", {"env": env, "stages_s": stages, "sizes": sizes,
                                                   "latency": latencies, "dev": accuracy}, "\n".join(md))
    print(f"wrote {out}/pipeline_cpu.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
