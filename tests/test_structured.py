"""Sparsity a CPU kernel can use: uniform per-layer sparsity (LayerwisePruner) and block scores (BlockScore)."""

from __future__ import annotations

import pytest
import torch

from mgpp.callback import PruningCallback
from mgpp.methods import PruningMethod
from mgpp.pruning import BlockScore, GlobalPruner, LayerwisePruner, TargetSelector, num_to_prune
from mgpp.schedules import CubicSparsity

SHAPES = [(16, 24), (8, 40), (32, 12), (4, 4, 8)]


def random_weights(shapes=SHAPES, seed=0, ties=False):
    gen = torch.Generator().manual_seed(seed)
    if ties:  # a handful of magnitudes: thresholds cut through crowds of equal weights
        return [torch.randint(-3, 4, s, generator=gen).float() / 4 for s in shapes]
    return [torch.randn(s, generator=gen) * (i + 1) for i, s in enumerate(shapes)]  # layers of different scales


# -- uniform per-layer sparsity --------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.29, 0.5, 0.77, 0.9, 0.999])
def test_layerwise_prunes_each_tensor_exactly_as_pruning_it_alone(sparsity, ties):
    params = random_weights(ties=ties)
    alone = [p.clone() for p in params]
    result = LayerwisePruner(chunk_numel=50).prune_(params, sparsity)
    counts = [num_to_prune(sparsity, p.numel()) for p in params]
    if not ties:  # (tied weights may be zero before the prune)
        assert [p.numel() - int(p.count_nonzero()) for p in params] == counts
    assert result.num_pruned == sum(counts) and result.numel == sum(p.numel() for p in params)
    thresholds = []
    for p, a, k in zip(params, alone, counts):
        single = GlobalPruner().prune_([a], sparsity)
        assert torch.equal(p, a)  # the same weights zeroed, ties broken by flat index alike
        assert single.num_pruned == k
        thresholds.append(single.threshold)
    if sum(counts):
        assert result.threshold == max(t for t in thresholds if t is not None)
    else:
        assert result.threshold is None


def test_layerwise_ends_every_layer_at_the_same_sparsity_where_the_global_one_does_not():
    params = random_weights()
    global_params = [p.clone() for p in params]
    LayerwisePruner().prune_(params, 0.75)
    GlobalPruner().prune_(global_params, 0.75)
    assert [int((p == 0).sum()) for p in params] == [num_to_prune(0.75, p.numel()) for p in params]
    spread = [float((p == 0).float().mean()) for p in global_params]
    assert max(spread) - min(spread) > 0.3  # layers of different scales: the global threshold prunes unevenly


def test_layerwise_follows_the_cubic_schedule_and_finds_thresholds_in_the_band():
    params = random_weights()
    schedule = CubicSparsity(final_sparsity=0.8, t_i=2, t_f=10, prune_every=2).bind(16)
    pruner = LayerwisePruner()
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 17):
        for p in params:
            p.add_(1e-3 * torch.randn(p.shape, generator=gen))
        if schedule.prunes_at(t):
            v = schedule.sparsity(t)
            copies = [p.clone() for p in params]
            result = pruner.prune_(params, v)
            assert result == LayerwisePruner().prune_(copies, v)  # the band never changes a result
            assert all(torch.equal(a, b) for a, b in zip(params, copies))
            assert [int((p == 0).sum()) for p in params] == [num_to_prune(v, p.numel()) for p in params]
    assert pruner.selections["band"] > 0, pruner.selections


def test_layerwise_refuses_sharded_training_and_non_finite_weights_before_touching_any():
    with pytest.raises(ValueError, match="does not support sharded training"):
        LayerwisePruner().prune_(random_weights(), 0.5, group=object())
    params = random_weights()
    params[-1].view(-1)[3] = float("nan")
    before = [p.clone() for p in params]
    with pytest.raises(ValueError, match="non-finite weights"):
        LayerwisePruner().prune_(params, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(params[:-1], before[:-1]))


# -- block scores -----------------------------------------------------------------------------------------
def block_view(p, rows, cols):
    m = p.reshape(-1, p.shape[-1])
    r, c = m.shape
    return m.reshape(r // rows, rows, c // cols, cols).permute(0, 2, 1, 3).reshape(-1, rows * cols)


@pytest.mark.parametrize("rows,cols", [(1, 4), (4, 1), (16, 1), (2, 4)])
@pytest.mark.parametrize("pruner_class", [GlobalPruner, LayerwisePruner])
@pytest.mark.parametrize("chunk", [None, 40])
def test_blocks_go_whole_at_multiples_of_the_block_share(rows, cols, pruner_class, chunk):
    shapes = [(32, 24), (16, 40), (64, 8)]
    params = random_weights(shapes)
    size = rows * cols
    total = sum(p.numel() for p in params)  # 768 + 640 + 512
    # sparsities that are multiples of one block's share: of the whole target set (global), of every
    # tensor (layerwise: j/8 of 768, 640 and 512 weights is a multiple of 16 weights)
    sparsities = ([b * size / total for b in (1, 3, 10, 13)] if pruner_class is GlobalPruner
                  else [j / 8 for j in (1, 3, 5, 7)])
    for v in sparsities:
        ps = [p.clone() for p in params]
        pruner_class(score=BlockScore(rows, cols), chunk_numel=chunk).prune_(ps, v)
        for p in ps:
            nonzero = (block_view(p, rows, cols) != 0).sum(1)
            assert bool(((nonzero == 0) | (nonzero == size)).all()), (rows, cols, v)
        if pruner_class is GlobalPruner:
            blocks_pruned = round(v * total / size)
            assert sum(int((p == 0).sum()) for p in ps) == blocks_pruned * size
            # the blocks of smallest RMS went
            norms = torch.cat([block_view(p, rows, cols).square().mean(1) for p in params])
            gone = torch.cat([(block_view(p, rows, cols) == 0).all(1) for p in ps])
            assert set(gone.nonzero().view(-1).tolist()) == set(norms.argsort()[:blocks_pruned].tolist())
        else:
            assert [int((p == 0).sum()) for p in ps] == [num_to_prune(v, p.numel()) for p in ps]


def test_block_count_is_exact_and_the_block_at_the_threshold_is_cut_in_flat_order():
    (w,) = random_weights([(8, 16)])
    GlobalPruner(score=BlockScore(1, 4)).prune_([w], 6 / 128)  # one block and a half
    assert int((w == 0).sum()) == 6
    rows = (w.view(-1, 4) == 0).sum(1)
    assert sorted(rows.tolist())[-2:] == [2, 4]
    half = int((rows == 2).nonzero())
    assert w.view(-1, 4)[half, :2].eq(0).all() and w.view(-1, 4)[half, 2:].ne(0).all()  # earliest first


def test_block_chunks_equal_one_chunk_and_the_band_equals_the_radix_select():
    params = random_weights([(32, 24), (16, 40)])
    for rows, cols in [(1, 4), (4, 1), (16, 1)]:
        pruner = GlobalPruner(score=BlockScore(rows, cols), chunk_numel=30)  # smaller than one band of rows
        gen = torch.Generator().manual_seed(rows)
        for _ in range(4):
            for p in params:
                p.add_(1e-3 * torch.randn(p.shape, generator=gen))
            copies = [p.clone() for p in params]
            assert pruner.prune_(params, 0.6) == GlobalPruner(score=BlockScore(rows, cols)).prune_(copies, 0.6)
            assert all(torch.equal(a, b) for a, b in zip(params, copies))
        assert pruner.selections["band"] >= 1, pruner.selections


def test_indivisible_shapes_and_transposed_layouts_are_refused_by_name():
    with pytest.raises(ValueError, match=r"layer.0.weight has shape \(4, 6\)"):
        GlobalPruner(score=BlockScore(1, 4)).prune_([torch.randn(4, 6)], 0.5, names=["layer.0.weight"])
    with pytest.raises(ValueError, match=r"layer.1.weight has shape \(12, 8\)"):
        GlobalPruner(score=BlockScore(16, 1)).check_targets(["layer.1.weight"], [torch.randn(12, 8)])
    with pytest.raises(ValueError, match=r"layer.1.weight has shape \(12, 8\)"):
        LayerwisePruner(score=BlockScore(16, 1)).prune_([torch.randn(12, 8)], 0.5, names=["layer.1.weight"])
    with pytest.raises(ValueError, match="positive integer"):
        BlockScore(0, 4)
    from test_decoder import tiny_gpt2

    targets = TargetSelector().select(tiny_gpt2())
    with pytest.raises(ValueError, match=r"transformer.h.0.attn.c_attn.weight stores transposed"):
        GlobalPruner(score=BlockScore(4, 1)).check_targets(targets.names, targets.params, targets.input_dims)


# -- the callback and the configs ---------------------------------------------------------------------------
def _method(name, sparsity, *overrides):
    from test_config import compose_train

    from mgpp.methods import build_method

    cfg = compose_train("method=gmp", f"pruning={name}", f"sparsity={sparsity}", "t_i=4", "t_f=16",
                        "prune_every=3", *overrides)
    return build_method(cfg)


@pytest.mark.parametrize("option,overrides,kind", [
    ("layerwise", (), LayerwisePruner),
    ("block", (), BlockScore),
    ("block", ("pruning.pruner.score.rows=4", "pruning.pruner.score.cols=1"), BlockScore),
    ("block", ("pruning.pruner.score.rows=16", "pruning.pruner.score.cols=1"), BlockScore),
])
def test_a_pruning_callback_run_ends_at_the_exact_target(tmp_path, option, overrides, kind):
    from test_callback import run

    sparsity = 0.75
    method = _method(option, sparsity, *overrides)
    assert isinstance(method.pruner if kind is LayerwisePruner else method.pruner.score, kind)
    model, pruning, memory = run(tmp_path, method)
    targets = pruning.targets
    zeros = targets.zeros_per_tensor()
    if kind is LayerwisePruner:
        assert zeros == [num_to_prune(sparsity, p.numel()) for p in targets.params]
    else:
        assert sum(zeros) == num_to_prune(sparsity, targets.numel)
        score = method.pruner.score
        for p in targets.params:  # tiny_bert's shapes make 0.75 a multiple of every block's share
            nonzero = (block_view(p.detach(), score.rows, score.cols) != 0).sum(1)
            assert bool(((nonzero == 0) | (nonzero == score.rows * score.cols)).all())
    last = [r for r in memory.records if r["kind"] == "scalars" and "pruning/threshold" in r][-1]
    assert last["pruning/threshold"] > 0 and last["pruning/target_sparsity"] == sparsity


def test_prior_annealing_calibrates_on_block_rms_and_the_callback_refuses_untiled_targets():
    from conftest import tiny_bert

    from mgpp.priors import MixtureGaussian
    from mgpp.schedules import PriorAnnealing

    params = random_weights([(32, 24), (16, 40)])
    prior = MixtureGaussian(lam=1e-7, sigma0_sq=1e-10, sigma1_sq=0.05)
    blocks = PriorAnnealing(final_sparsity=0.5, t_i=2, t_f=8).bind(10, prior, params, GlobalPruner(score=BlockScore(4, 1)))
    plain = PriorAnnealing(final_sparsity=0.5, t_i=2, t_f=8).bind(10, prior, params, GlobalPruner())
    assert 0.1 < blocks.sigma0_sq_init / plain.sigma0_sq_init < 10  # block RMS is on the weights' own scale
    method = PruningMethod(schedule=CubicSparsity(final_sparsity=0.5, t_i=1, t_f=2),
                           pruner=GlobalPruner(score=BlockScore(3, 1)))
    with pytest.raises(ValueError, match=r"bert.encoder.layer.0.attention.self.query.weight has shape \(32, 32\)"):
        PruningCallback(method, train_size=8).setup(tiny_bert(), total_steps=4)
