"""Pruning across processes: each rank holds a dim-0 shard of every target (as FSDP does), and the
prune over the shards equals one process pruning the whole tensors, threshold, mask and ties included."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mgpp.pruning import GlobalPruner, NMPruner

WORLD = 2
SHAPES = [(7, 12), (16, 8), (3, 20), (1, 4)]  # uneven row counts, and a tensor one rank holds nothing of


def weights(kind: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if kind == "ties":  # a handful of magnitudes: the threshold cuts through a crowd of equal weights
        return [torch.randint(-3, 4, s, generator=gen).float() / 4 for s in SHAPES]
    return [torch.randn(s, generator=gen) for s in SHAPES]


def make_pruner(kind: str):
    return NMPruner(n=2, m=4) if kind == "nm" else GlobalPruner(chunk_numel=16)  # small chunks: many of them


def _worker(rank: int, init_file: str, out_dir: str, kind: str, sparsity: float) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        shards = [torch.chunk(w, WORLD, dim=0)[rank].clone() if rank < len(torch.chunk(w, WORLD, dim=0))
                  else w[:0].clone() for w in weights(kind)]
        result = make_pruner(kind).prune_(shards, sparsity, group=dist.group.WORLD)
        torch.save({"shards": shards, "result": result}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind,sparsity", [("random", 0.7), ("ties", 0.5), ("ties", 0.77), ("nm", 0.3), ("nm", 0.5)])
def test_sharded_prune_equals_the_single_process_prune(tmp_path, kind, sparsity):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path), kind, sparsity), nprocs=WORLD,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    whole = weights(kind)
    expected = make_pruner(kind).prune_(whole, sparsity)
    for i, w in enumerate(whole):
        assert torch.equal(torch.cat([r["shards"][i] for r in ranks]), w), f"tensor {i}"
    for r in ranks:
        assert r["result"] == expected  # the same threshold, count and global numel on every rank
    total = sum(w.numel() for w in whole)
    assert sum(int((w == 0).sum()) for w in whole) >= expected.num_pruned == int(sparsity * total + 1e-6) \
        or kind == "nm"
