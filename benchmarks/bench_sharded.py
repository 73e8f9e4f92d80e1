"""Benchmark of the sharded prune (FSDP-style dim-0 shards): what it communicates and what it keeps.

Each of ``--world`` processes (gloo on CPU) holds the dim-0 shard of every target of a BERT-base-shaped
model (72 matrices, 84.9M weights; random values) and prunes to 90% over all shards with
``GlobalPruner.prune_(..., group=...)``. Printed per prune: the bytes each rank sends in collectives
(counted by wrapping ``all_reduce``/``all_gather``), the pruning state kept per target weight (the
pruner keeps none; the callback's optional regrowth measure keeps 1 byte), and whether the threshold
and the number of zeros equal those of one process pruning the whole tensors.
Results go to ``experiments/results/bench_sharded_cpu.{json,md}``.

    python benchmarks/bench_sharded.py [--world 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402
from mgpp.pruning import GlobalPruner, num_to_prune  # noqa: E402

SPARSITY = 0.9


def bert_base_targets(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]
    return [torch.randn(s, generator=gen) * 0.02 for _ in range(12) for s in shapes]


def _count_collectives(sent: dict) -> None:
    """Wrap the collectives the pruner calls so that each adds the bytes it sends to ``sent``."""
    all_reduce, all_gather = dist.all_reduce, dist.all_gather

    def counted_all_reduce(tensor, *args, **kwargs):
        sent["all_reduce"] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, *args, **kwargs)

    def counted_all_gather(outputs, tensor, *args, **kwargs):
        sent["all_gather"] += tensor.numel() * tensor.element_size()
        return all_gather(outputs, tensor, *args, **kwargs)

    dist.all_reduce, dist.all_gather = counted_all_reduce, counted_all_gather


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shards = [torch.chunk(w, world, dim=0)[rank].clone() for w in bert_base_targets()]
        sent = {"all_reduce": 0, "all_gather": 0}
        _count_collectives(sent)
        dist.barrier()
        start = time.perf_counter()
        result = GlobalPruner().prune_(shards, SPARSITY, group=dist.group.WORLD)
        seconds = time.perf_counter() - start
        zeros = sum(int((s == 0).sum()) for s in shards)
        local = sum(s.numel() for s in shards)
        torch.save({"rank": rank, "threshold": result.threshold, "num_pruned": result.num_pruned, "numel": result.numel,
                    "zeros": zeros, "local_weights": local, "sent": dict(sent), "seconds": seconds},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(args.world, os.path.join(tmp, "init"), tmp), nprocs=args.world,
                           start_method="spawn")
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(args.world)]
    whole = bert_base_targets()
    reference = GlobalPruner().prune_(whole, SPARSITY)
    numel = sum(w.numel() for w in whole)
    zeros = sum(r["zeros"] for r in ranks)
    sent = max(r["sent"]["all_reduce"] + r["sent"]["all_gather"] for r in ranks)
    res = {"world": args.world, "targets": len(whole), "target_weights": numel, "sparsity": SPARSITY,
           "zeros_over_ranks": zeros, "expected_zeros": num_to_prune(SPARSITY, numel),
           "threshold_equal": all(r["threshold"] == reference.threshold for r in ranks),
           "bytes_sent_per_rank_per_prune": sent, "bytes_sent_per_target_weight": sent / numel,
           "pruner_state_bytes_per_weight": 0, "regrowth_state_bytes_per_weight": 1,
           "weights_per_rank": [r["local_weights"] for r in ranks],
           "prune_seconds_per_rank": [round(r["seconds"], 3) for r in ranks]}
    md = "\n".join([
        f"Sharded prune, BERT-base-shaped targets ({len(whole)} matrices, {numel:,} weights) on {args.world} "
        f"gloo processes (CPU), sparsity {SPARSITY}; `python benchmarks/bench_sharded.py --world {args.world}`.", "",
        "| quantity | value |", "|---|---|",
        f"| zeros over all ranks / floor(v*d) | {zeros:,} / {res['expected_zeros']:,} |",
        f"| threshold equal to the 1-process prune on every rank | {res['threshold_equal']} |",
        f"| bytes each rank sends per prune | {sent:,} ({sent / 2**10:.0f} KiB; {sent / numel:.4f} B per target weight) |",
        "| persistent pruning state (MGPP, GMP, L2) | 0 B per target weight |",
        "| with the regrowth measure (`report.regrowth=true`) or PA's fixed mask | 1 B per target weight |",
        f"| prune wall time per rank (s; 1 thread each, not an idle-machine timing) | {res['prune_seconds_per_rank']} |"])
    write_results(args.out, "bench_sharded_cpu", res, md)
    print(md)
    return 0 if res["threshold_equal"] and zeros >= res["expected_zeros"] else 1


if __name__ == "__main__":
    sys.exit(main())
