"""Pruning across processes: each rank holds a dim-0 shard of every target (as FSDP does), and the
prune over the shards equals one process pruning the whole tensors, threshold, mask and ties included."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


CASES = [("random", 0.7), ("ties", 0.5), ("ties", 0.77), ("nm", 0.3), ("nm", 0.5)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """Every case on one start of the process group (starting two processes costs more than the prunes)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for kind, sparsity in CASES:
            shards = [torch.chunk(w, WORLD, dim=0)[rank].clone() if rank < len(torch.chunk(w, WORLD, dim=0))
                      else w[:0].clone() for w in weights(kind)]
            result = make_pruner(kind).prune_(shards, sparsity, group=dist.group.WORLD)
            torch.save({"shards": shards, "result": result}, os.path.join(out_dir, f"{kind}-{sparsity}-rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_prunes(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    mp.start_processes(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, start_method="spawn")
    return out


@pytest.mark.parametrize("kind,sparsity", CASES)
def test_sharded_prune_equals_the_single_process_prune(sharded_prunes, kind, sparsity):
    ranks = [torch.load(sharded_prunes / f"{kind}-{sparsity}-rank{r}.pt", weights_only=False) for r in range(WORLD)]
    whole = weights(kind)
    expected = make_pruner(kind).prune_(whole, sparsity)
    for i, w in enumerate(whole):
        assert torch.equal(torch.cat([r["shards"][i] for r in ranks]), w), f"tensor {i}"
    for r in ranks:
        assert r["result"] == expected  # the same threshold, count and global numel on every rank
    total = sum(w.numel() for w in whole)
    assert sum(int((w == 0).sum()) for w in whole) >= expected.num_pruned == int(sparsity * total + 1e-6) \
        or kind == "nm"


# -- FSDP2: the callback on sharded targets ------------------------------------------------------------
STEPS = 8


def _no_dropout_bert():
    from conftest import tiny_bert

    model = tiny_bert()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _batches():
    from conftest import VOCAB

    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, VOCAB, (8, 12), generator=gen), torch.randint(0, 2, (8,), generator=gen))
            for _ in range(STEPS)]


def _train(model, callback, rank=0, world=1):
    """A plain loop calling the callback's steps as the Trainer does; each rank takes its part of each batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    callback.setup(model, total_steps=STEPS)
    for t, (ids, labels) in enumerate(_batches(), start=1):
        part = slice(rank * 8 // world, (rank + 1) * 8 // world)
        model(input_ids=ids[part], labels=labels[part]).loss.backward()
        callback.add_prior_grad(t)
        optimizer.step()
        callback.prune(t)
        optimizer.zero_grad()
    return callback


def _method():
    from mgpp.methods import PruningMethod
    from mgpp.priors import MixtureGaussian
    from mgpp.schedules import CubicSparsity

    return PruningMethod(prior=MixtureGaussian(lam=1e-7, sigma0_sq=1e-6, sigma1_sq=0.05),
                         schedule=CubicSparsity(final_sparsity=0.8, t_i=2, t_f=6, prune_every=2))


def _fsdp_worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from safetensors.torch import save_file

    from mgpp.callback import PruningCallback
    from mgpp.train import _whole_targets
    from mgpp.training_log import layer_table, log_magnitude_histogram, weight_histogram

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = _no_dropout_bert()
        for layer in model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        callback = _train(model, PruningCallback(_method(), train_size=64), rank, WORLD)
        assert callback.group is not None
        metrics = callback.metrics()
        full = {n: p.full_tensor() for n, p in zip(callback.targets.names, callback.sharded)}
        # the dashboards' histograms and per-layer table, over every rank's shards (each rank joins)
        shards = callback.targets.params
        logged = {"linear": weight_histogram(shards, 16, callback.group),
                  "log10": log_magnitude_histogram(shards, 16, group=callback.group), "table": layer_table(callback)}
        if rank == 0:
            whole = list(full.values())
            unsharded = {"linear": weight_histogram(whole, 16), "log10": log_magnitude_histogram(whole, 16)}
            save_file(full, os.path.join(out_dir, "model.safetensors"))  # as the Trainer's save gathers it
            names, saved = _whole_targets(callback, Path(out_dir))
            torch.save({"weights": full, "metrics": metrics, "logged": logged, "unsharded": unsharded,
                        "saved_targets": dict(zip(names, saved))}, os.path.join(out_dir, "fsdp.pt"))
        dist.barrier()  # no rank tears gloo down while another still works: a busy machine aborted one (SIGABRT)
    finally:
        dist.destroy_process_group()


def test_fsdp2_run_ends_with_the_masks_of_a_single_process_run(tmp_path):
    from mgpp.callback import PruningCallback

    mp.start_processes(_fsdp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    sharded = torch.load(tmp_path / "fsdp.pt", weights_only=False)
    reference = _train(_no_dropout_bert(), PruningCallback(_method(), train_size=64))
    assert sharded["metrics"]["pruning/zero_fraction_now"] == pytest.approx(reference.metrics()["pruning/zero_fraction_now"], abs=1e-9)
    assert sharded["metrics"]["pruning/threshold"] == pytest.approx(reference.threshold, rel=1e-4)
    for key, value in reference.regrowth.items():  # over every rank's shards, not rank 0's
        assert sharded["metrics"]["pruning/" + key] == pytest.approx(value, rel=1e-3), key
    for name, p in zip(reference.targets.names, reference.targets.params):
        w = sharded["weights"][name]
        assert torch.equal(w == 0, p == 0), name  # exactly the same masks
        assert torch.allclose(w, p, atol=1e-5), name
        assert torch.equal(sharded["saved_targets"][name], w), name  # the mask's source under FSDP: the saved model
    # histograms over the shards of all ranks = histograms of the whole tensors
    for kind in ("linear", "log10"):
        logged, whole = sharded["logged"][kind], sharded["unsharded"][kind]
        assert logged.counts == whole.counts and logged.num == whole.num and logged.edges == whole.edges, kind
        assert (logged.min, logged.max) == (whole.min, whole.max), kind
        assert logged.sum == pytest.approx(whole.sum, rel=1e-9) and logged.sum_squares == pytest.approx(whole.sum_squares)
    from mgpp.training_log import layer_table

    assert sharded["logged"]["table"] == layer_table(reference)  # whole tensors' sizes and zeros, same masks


# -- DDP: python -m torch.distributed.run --nproc_per_node 2 -m mgpp.train ----------------------------
def _saved_targets(run_dir):
    from transformers import AutoModelForSequenceClassification

    from mgpp.pruning import TargetSelector

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    targets = TargetSelector().select(model)
    return {name: p.detach() for name, p in zip(targets.names, targets.params)}


@pytest.mark.skipif(not __import__("test_train").GLUE, reason="no local GLUE folder (../shared/data/glue)")
def test_ddp_run_on_two_processes_matches_one_process_and_only_rank0_writes(tmp_path):
    import subprocess
    import sys

    from test_train import QUICK, ROOT, read_jsonl

    common = [*QUICK, "model=tiny_bert", "task=rte", "method=mgpp", "sparsity=0.8", "resume=false",
              "+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0",
              "logger=[jsonl,tensorboard]"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def run(prefix, run_dir, batch):
        proc = subprocess.run([*prefix, "-m", "mgpp.train", *common, f"trainer.per_device_train_batch_size={batch}",
                               f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"],
        tmp_path / "ddp", 8)
    run([sys.executable], tmp_path / "single", 16)  # the same global batch on one process

    ddp, single = _saved_targets(tmp_path / "ddp"), _saved_targets(tmp_path / "single")
    # masks exactly equal; weights to float tolerance (different padding per rank, different reduction
    # order: measured up to 3.4e-5 after 24 AdamW steps at lr 1e-3 on weights of ~0.02)
    # The masks agree except for swaps at the threshold: a weight one run keeps by a hair the other prunes.
    # Rounding differs between a 2-rank gradient average and a 1-process mean, so exact agreement of the
    # last weight in can never be promised (measured: 0 to 2 of 16,384 entries).
    def kept_min(run):
        return min(float(w.abs()[w != 0].min()) for w in run.values())

    boundary = max(kept_min(ddp), kept_min(single)) + 1e-4
    flipped = torch.cat([torch.where(ddp[n] == 0, w, ddp[n])[(ddp[n] == 0) != (w == 0)] for n, w in single.items()])
    total = sum(w.numel() for w in single.values())
    assert flipped.numel() <= 4, f"{flipped.numel()} of {total} mask entries differ"
    assert bool((flipped.abs() <= boundary).all()), "a mask difference away from the threshold"
    for name, w in single.items():  # elsewhere the weights agree to float tolerance
        same = (ddp[name] == 0) == (w == 0)
        assert torch.allclose(ddp[name][same], w[same], atol=1e-4), (name, float((ddp[name] - w)[same].abs().max()))
    records = read_jsonl(tmp_path / "ddp" / "log.jsonl")
    steps = [r["step"] for r in records if r["kind"] == "scalars" and "train/loss" in r]
    assert steps == [4, 8, 12, 16, 20, 24]  # logged once, by rank 0
    writers = {f.name.split(".")[-2] for f in (tmp_path / "ddp").rglob("events.out.tfevents*")}  # ...<host>.<pid>.<n>
    assert len(writers) == 1  # one process wrote TensorBoard (its scalars and, at the end, its HParams)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train_steps"] == 24 and metrics["sparsity"] == pytest.approx(0.8, abs=1e-4)
