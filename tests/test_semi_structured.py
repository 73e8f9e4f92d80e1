"""N:M semi-structured pruning: the exact pattern, the gradual path to it, and a run that exports it."""

from __future__ import annotations

import json

import pytest
import torch

from mgpp.export import export_sparse, load_sparse, nm_pattern
from mgpp.methods import PruningMethod
from mgpp.pruning import GlobalPruner, NMPruner, TargetSelector
from mgpp.schedules import CubicSparsity

from test_train import QUICK, needs_glue, run_train


def random_weights(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (2, 3), (1, 2)])
def test_full_sparsity_keeps_exactly_the_n_largest_of_every_m(n, m):
    params = random_weights((16, 24 * m // 2), (8, 12 * m), (5, 2 * m, m))
    originals = [p.clone() for p in params]
    result = NMPruner(n=n, m=m).prune_(params, 1 - n / m)
    total = sum(p.numel() for p in params)
    assert result.num_pruned == total // m * (m - n)
    for p, before in zip(params, originals):
        groups, groups_before = p.view(-1, m), before.view(-1, m)
        assert bool(((groups != 0).sum(1) == n).all())
        largest = groups_before.abs().topk(n, dim=1).indices
        assert torch.equal(groups.gather(1, largest), groups_before.gather(1, largest))
        assert nm_pattern(p, group_sizes=(m,)) == f"{n}:{m}"


def test_below_the_pattern_the_globally_smallest_outside_each_groups_best_go_first():
    (w,) = random_weights((32, 64))
    before = w.clone()
    k = int(0.3 * w.numel())
    NMPruner(n=2, m=4).prune_([w], 0.3)
    assert int((w == 0).sum()) == k
    groups, groups_before = w.view(-1, 4), before.view(-1, 4)
    assert bool(((groups != 0).sum(1) >= 2).all())  # no group's two largest touched
    # the pruned ones are the k smallest |w| among those outside their group's two largest
    candidates = groups_before.abs().scatter(1, groups_before.abs().topk(2, dim=1).indices, float("inf"))
    smallest = candidates.view(-1).argsort()[:k]
    assert bool((w.view(-1)[smallest] == 0).all())


def test_the_cubic_schedule_reaches_the_pattern_step_by_step():
    (w,) = random_weights((16, 32))
    schedule = CubicSparsity(final_sparsity=0.5, t_i=2, t_f=10, prune_every=2).bind(12)
    pruner = NMPruner(n=2, m=4)
    zeros = []
    for t in range(1, 13):
        w.add_(0.01 * torch.randn_like(w))  # training moves the weights between prunes
        if schedule.prunes_at(t):
            pruner.prune_([w], schedule.sparsity(t))
            zeros.append(int((w == 0).sum()))
    assert zeros == sorted(zeros) and zeros[-1] == w.numel() // 2
    assert bool(((w.view(-1, 4) != 0).sum(1) == 2).all())


def test_what_n_m_cannot_do_fails_by_name():
    with pytest.raises(ValueError, match="0 < n < m"):
        NMPruner(n=4, m=4)
    with pytest.raises(ValueError, match=r"more than NMPruner\(n=2, m=4\) can reach \(0.5\)"):
        NMPruner().prune_(random_weights((4, 8)), 0.6)
    with pytest.raises(ValueError, match=r"layer.0.weight has shape \(4, 6\)"):
        NMPruner().prune_(random_weights((4, 6)), 0.5, names=["layer.0.weight"])
    with pytest.raises(ValueError, match="run with sparsity=0.5"):
        PruningMethod(schedule=CubicSparsity(final_sparsity=0.9, t_i=1, t_f=2), pruner=NMPruner())


@needs_glue
def test_a_2_4_run_ends_in_the_exact_pattern_and_exports_it(tmp_path):
    run_train(*QUICK, "model=tiny_bert", "task=rte", "method=mgpp", "pruning=semi_structured", "sparsity=0.5",
              "logger=[jsonl]", f"hydra.run.dir={tmp_path}", "resume=false")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    targets = TargetSelector().select(model)
    for name, p in zip(targets.names, targets.params):
        assert bool(((p.view(-1, 4) != 0).sum(1) == 2).all()), name
    export_sparse(tmp_path / "model", tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "sparse_manifest.json").read_text())["tensors"]
    assert {manifest[n]["pattern"] for n in targets.names} == {"2:4"}
    reloaded = load_sparse(tmp_path / "export").state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())


def test_groups_stay_whole_across_chunk_boundaries_and_ties():
    (w,) = random_weights((6, 40))
    w.view(-1)[::7] = 0.25  # ties inside and across groups
    reference = w.clone()
    NMPruner(n=2, m=4, chunk_numel=12).prune_([w], 0.5)  # 12: three groups a chunk, many chunks
    NMPruner(n=2, m=4).prune_([reference], 0.5)  # one chunk
    assert torch.equal(w, reference)
    assert bool(((w.view(-1, 4) != 0).sum(1) <= 2).all())


def test_prior_annealing_calibrates_on_the_weights_not_the_pattern():
    from mgpp.priors import MixtureGaussian
    from mgpp.pruning import kth_smallest
    from mgpp.schedules import PriorAnnealing

    params = random_weights((16, 32))
    prior = MixtureGaussian(lam=1e-7, sigma0_sq=1e-10, sigma1_sq=0.05)
    pattern = PriorAnnealing(final_sparsity=0.5, t_i=2, t_f=8).bind(10, prior, params, NMPruner())
    plain = PriorAnnealing(final_sparsity=0.5, t_i=2, t_f=8).bind(10, prior, params, GlobalPruner())
    assert pattern.sigma0_sq_init == plain.sigma0_sq_init  # the median |w|, not the largest weight N:M cuts
    assert kth_smallest(params, 256)[0] < 10  # (a finite median)


def test_the_suggested_sparsity_of_an_inexact_pattern_is_accepted():
    with pytest.raises(ValueError, match="run with sparsity=0.666667") as err:
        PruningMethod(schedule=CubicSparsity(final_sparsity=0.9, t_i=1, t_f=2), pruner=NMPruner(n=1, m=3))
    suggested = float(str(err.value).split("run with sparsity=")[1].split()[0])
    PruningMethod(schedule=CubicSparsity(final_sparsity=suggested, t_i=1, t_f=2), pruner=NMPruner(n=1, m=3))
    (w,) = random_weights((4, 12))
    NMPruner(n=1, m=3).prune_([w], suggested)
    assert bool(((w.view(-1, 3) != 0).sum(1) == 1).all())


def test_gpt2_conv1d_weights_are_refused_by_n_m():
    from test_decoder import tiny_gpt2

    targets = TargetSelector().select(tiny_gpt2())
    assert set(targets.input_dims) == {0}
    with pytest.raises(ValueError, match=r"transformer.h.0.attn.c_attn.weight stores first \(GPT-2's Conv1D"):
        NMPruner().check_targets(targets.names, targets.params, targets.input_dims)
