import pytest
import torch

from mgpp.pruning import FixedMask, GlobalPruner, TargetSelector, kth_smallest, num_to_prune

from conftest import LAYERS, tiny_bart, tiny_bert, tiny_deberta


def tensors_with_ties(dtype=torch.float32):
    torch.manual_seed(1)
    ps = [torch.randn(37, 23), torch.randn(500), torch.randn(4, 5, 6), torch.randn(301)]
    ps[1][:200] = 0.25  # a big block of ties
    ps[3][::3] = -0.25  # ties of the same magnitude in another tensor
    ps[0][:5] = 0.0
    return [p.to(dtype) for p in ps]


def concat_abs(ps):
    return torch.cat([p.float().abs().view(-1) for p in ps])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [7, 256, 1 << 18])
def test_kth_smallest_equals_torch_kthvalue(dtype, chunk):
    ps = tensors_with_ties(dtype)
    flat = concat_abs(ps)
    for k in [1, 2, 6, 100, 437, flat.numel() // 2, int(0.9 * flat.numel()), flat.numel()]:
        value, below = kth_smallest(ps, k, chunk_numel=chunk)
        ref = torch.kthvalue(flat, k).values.item()
        assert value == ref, k
        assert below == int((flat < ref).sum())


def test_kth_smallest_on_signed_scores():
    ps = tensors_with_ties()
    flat = torch.cat([p.view(-1) for p in ps])
    identity = lambda w: w.detach().float()  # noqa: E731  a score that can be negative
    for k in [1, 50, flat.numel() // 3, flat.numel()]:
        value, below = kth_smallest(ps, k, identity, chunk_numel=64)
        assert value == torch.kthvalue(flat, k).values.item()
        assert below == int((flat < value).sum())


def test_kth_smallest_rejects_bad_k():
    with pytest.raises(ValueError, match="k=0"):
        kth_smallest([torch.randn(3)], 0)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_global_pruner_hits_exact_sparsity_with_ties(sparsity):
    ps = tensors_with_ties()
    numel = sum(p.numel() for p in ps)
    flat_before = concat_abs(ps)
    result = GlobalPruner(chunk_numel=100).prune_(ps, sparsity)
    k = int(sparsity * numel)
    assert result.num_pruned == k
    assert sum(int((p == 0).sum()) for p in ps) == k
    assert result.threshold == torch.kthvalue(flat_before, k).values.item()
    flat_after = concat_abs(ps)
    # everything strictly below the threshold is gone, everything above it survives
    assert (flat_after[flat_before < result.threshold] == 0).all()
    assert (flat_after[flat_before > result.threshold] != 0).all()


def test_ties_are_broken_by_model_order():
    ps = [torch.full((10,), 0.5), torch.full((10,), 0.5)]
    GlobalPruner(chunk_numel=3).prune_(ps, 0.65)  # 13 of 20, all tied
    assert (ps[0] == 0).all()
    assert torch.equal(ps[1] == 0, torch.arange(10) < 3)


def test_zero_sparsity_is_a_no_op():
    ps = tensors_with_ties()
    before = [p.clone() for p in ps]
    result = GlobalPruner().prune_(ps, 0.0)
    assert result.threshold is None and all(torch.equal(a, b) for a, b in zip(ps, before))


def test_num_to_prune_survives_binary_rounding():
    assert num_to_prune(0.29, 100) == 29  # 0.29 * 100 = 28.999999999999996
    assert num_to_prune(0.9, 10) == 9


def test_pruner_rejects_bad_sparsity():
    with pytest.raises(ValueError, match="sparsity=1.0"):
        GlobalPruner().prune_([torch.randn(4)], 1.0)


def layer_names(prefix, n, suffixes):
    return {f"{prefix}.{i}.{s}.weight" for i in range(n) for s in suffixes}


def test_default_targets_bert():
    got = set(TargetSelector().select(tiny_bert()).names)
    expected = layer_names(
        "bert.encoder.layer",
        LAYERS,
        ["attention.self.query", "attention.self.key", "attention.self.value",
         "attention.output.dense", "intermediate.dense", "output.dense"],
    )
    assert got == expected


def test_default_targets_deberta_v2():
    got = set(TargetSelector().select(tiny_deberta()).names)
    expected = layer_names(
        "deberta.encoder.layer",
        LAYERS,
        ["attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
         "attention.output.dense", "intermediate.dense", "output.dense"],
    )
    assert got == expected  # rel_embeddings, LayerNorm, pooler and classifier are left alone


def test_default_targets_bart_encoder_and_decoder():
    got = set(TargetSelector().select(tiny_bart()).names)
    attn = ["q_proj", "k_proj", "v_proj", "out_proj"]
    expected = layer_names("model.encoder.layers", LAYERS, [f"self_attn.{a}" for a in attn] + ["fc1", "fc2"])
    expected |= layer_names(
        "model.decoder.layers",
        LAYERS,
        [f"self_attn.{a}" for a in attn] + [f"encoder_attn.{a}" for a in attn] + ["fc1", "fc2"],
    )
    assert got == expected  # shared embeddings / lm_head are never targets


def test_custom_patterns_regex_and_glob():
    model = tiny_bert()
    attn = TargetSelector(include=["glob:*.attention.self.*.weight"]).select(model)
    assert len(attn) == 3 * LAYERS
    ffn = TargetSelector(include=[r"intermediate\.dense\.weight$"]).select(model)
    assert ffn.names == [f"bert.encoder.layer.{i}.intermediate.dense.weight" for i in range(LAYERS)]


def test_patterns_matching_nothing_are_reported():
    with pytest.raises(ValueError, match=r"matched no parameter of BertForSequenceClassification"):
        TargetSelector(include=["decoder.layers"]).select(tiny_bert())
    with pytest.raises(ValueError, match="not a valid regular expression"):
        TargetSelector(include=["(unclosed"])


def test_targets_report_sparsity():
    targets = TargetSelector().select(tiny_bert())
    assert targets.sparsity() == 0.0
    GlobalPruner().prune_(targets.params, 0.5)
    assert targets.sparsity() == pytest.approx(0.5, abs=1 / targets.numel)
    per_layer = targets.layer_sparsity()
    assert set(per_layer) == set(targets.names) and 0 < min(per_layer.values())
    assert "target tensors" in targets.summary()


def test_fixed_mask_keeps_pruned_weights_at_zero():
    ps = tensors_with_ties()
    GlobalPruner().prune_(ps, 0.5)
    mask = FixedMask(ps)
    zeros = [p == 0 for p in ps]
    for p in ps:
        p.add_(1.0)
    mask.apply_(ps)
    assert all(torch.equal(p == 0, z) for p, z in zip(ps, zeros))


def test_pruner_refuses_non_finite_weights():
    weights = [torch.full((10, 10), float("nan")), torch.randn(4, 4)]
    with pytest.raises(ValueError, match="non-finite"):
        GlobalPruner().prune_(weights, 0.5)
    partly = [torch.randn(10, 10), torch.randn(4, 4)]
    partly[1][0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        GlobalPruner().prune_(partly, 0.5)


# -- the band around the previous threshold (every step after t_f prunes to the same count) ---------
def flat_bits(ps):
    return [p.detach().clone().view(torch.int16 if p.element_size() == 2 else torch.int32) for p in ps]


def prune_both(ps, sparsity, pruner, chunk):
    """Prune ``ps`` with ``pruner`` (which may use its band) and a copy with a fresh pruner (radix select
    only); check they agree bit for bit, and with torch.kthvalue over the concatenation."""
    copies = [p.clone() for p in ps]
    flat = concat_abs(ps)
    got = pruner.prune_(ps, sparsity)
    want = GlobalPruner(chunk_numel=chunk).prune_(copies, sparsity)
    assert got == want
    assert got.threshold == torch.kthvalue(flat, got.num_pruned).values.item()
    assert all(torch.equal(a, b) for a, b in zip(flat_bits(ps), flat_bits(copies)))
    assert sum(int((p == 0).sum()) for p in ps) == max(got.num_pruned, int((flat == 0).sum()))
    return got


def band_tries(pruner):
    return sum(n for outcome, n in pruner.selections.items() if outcome.startswith("band"))


@pytest.mark.parametrize("chunk", [7, 100, 1 << 17])
@pytest.mark.parametrize("move", [1e-4, 1e-2, 1.0, "rescale"])
def test_band_select_equals_radix_select_on_moving_weights(chunk, move):
    """Every round all weights move (the pruned ones regrow), then a prune to the same sparsity again;
    "rescale" also scales every weight by 3 or 1/3 in turn, throwing the threshold out of any band."""
    ps = tensors_with_ties()
    pruner = GlobalPruner(chunk_numel=chunk)
    gen = torch.Generator().manual_seed(2)
    rounds = 12
    for r in range(rounds):
        for p in ps:
            p.add_(torch.randn(p.shape, generator=gen) * (1.0 if move == "rescale" else move) * p.abs().mean())
            if move == "rescale":
                p.mul_(3.0 if r % 2 else 1 / 3)
        prune_both(ps, 0.8, pruner, chunk)
    assert band_tries(pruner) == rounds - 1  # every prune after the first had a hint
    assert pruner.selections["band"] + pruner.selections["radix"] == rounds
    if move == "rescale":
        assert pruner.selections["band_miss"] == rounds - 1
    else:  # after the first hint (the threshold of weights never pruned before), the band finds it
        assert pruner.selections["band"] >= rounds - 3, pruner.selections


def test_band_select_equals_radix_select_for_n_m_pruning():
    """N:M scores hold +inf (each group's best): the band's counts take them as above it."""
    from mgpp.pruning import NMPruner

    torch.manual_seed(4)
    ps = [torch.randn(16, 24), torch.randn(8, 12)]
    pruner = NMPruner(n=2, m=4)
    for _ in range(6):
        for p in ps:
            p.add_(torch.randn(p.shape) * 1e-3)
        copies = [p.clone() for p in ps]
        assert pruner.prune_(ps, 0.4) == NMPruner(n=2, m=4).prune_(copies, 0.4)
        assert all(torch.equal(a, b) for a, b in zip(ps, copies))
    assert pruner.selections["band"] >= 3, pruner.selections


def test_band_hits_the_ties_at_zero_when_the_pruned_weights_stay_pruned():
    ps = tensors_with_ties()
    pruner = GlobalPruner(chunk_numel=64)
    prune_both(ps, 0.6, pruner, 64)
    for _ in range(3):
        for p in ps:  # only the kept weights move: the threshold is 0, tied k times
            p.mul_(1.01)
        result = prune_both(ps, 0.6, pruner, 64)
        assert result.threshold == 0.0
    # the first hint is the first prune's threshold, far above 0: a miss; then 0 is found in the band [0, 0]
    assert pruner.selections["band_miss"] == 1 and pruner.selections["band"] == 2


@pytest.mark.parametrize("chunk", [5, 64, 1 << 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_band_select_counts_ties_as_the_radix_select(chunk, dtype):
    """``(threshold, below, equal)`` from the band equal :func:`_select`'s for every k, ties included, with
    the band's edges on the tied value, inside a block of ties, and on signed scores (-0.0 and 0.0)."""
    from mgpp.pruning import MagnitudeScore, _select, _select_in_band

    ps = tensors_with_ties(dtype)
    ps[2].view(-1)[:7] = -0.0
    flat = concat_abs(ps)
    signed = lambda w: w.detach().float()  # noqa: E731
    for score, values in ((MagnitudeScore(), flat), (signed, torch.cat([p.float().view(-1) for p in ps]))):
        for k in [1, 5, 6, 12, 100, 250, 437, 600, values.numel() // 2, values.numel()]:
            want = _select(ps, k, score, chunk)
            t = want[0]
            for lo, hi in [(t, t), (t - 0.01, t), (t, t + 0.01), (t - 0.1 * abs(t) - 1e-3, t + 0.1 * abs(t) + 1e-3),
                           (float(values.min()), float(values.max()))]:
                got, outcome = _select_in_band(ps, k, score, chunk, lo, hi, 1 << 20)
                assert outcome == "band" and got == want, (k, lo, hi)
                assert str(got[0]) == str(want[0])  # 0.0, never -0.0
            got, outcome = _select_in_band(ps, k, score, chunk, t + 0.5, t + 1.0, 1 << 20)
            assert got is None and outcome == "band_miss"


def test_a_far_off_or_crowded_band_falls_back_to_the_radix_select(monkeypatch):
    import mgpp.pruning as pruning

    base = tensors_with_ties()
    pruner = GlobalPruner(chunk_numel=50)
    weights = lambda scale=1.0: [p * scale for p in base]  # noqa: E731
    prune_both(weights(), 0.7, pruner, 50)
    prune_both(weights(), 0.7, pruner, 50)  # the same weights: the same threshold, found in the band
    assert pruner.selections["radix"] == 1 and pruner.selections["band"] == 1
    prune_both(weights(100.0), 0.7, pruner, 50)  # the threshold moves 100x: far outside the band
    assert pruner.selections["band_miss"] == 1 and pruner.selections["radix"] == 2
    monkeypatch.setattr(pruning, "BAND_MAX_NUMEL", 3)  # at most 3 scores in a band: too crowded
    prune_both(weights(100.0), 0.7, pruner, 50)
    assert pruner.selections["band_full"] == 1 and pruner.selections["radix"] == 3
    pruner.forget_threshold()
    prune_both(weights(), 0.7, pruner, 50)
    assert pruner.selections["radix"] == 4 and band_tries(pruner) == 3
    prune_both(weights(), 0.5, pruner, 50)  # another count to prune: the hint is not for it
    assert pruner.selections["radix"] == 5 and band_tries(pruner) == 3


@pytest.mark.parametrize("bad", [float("nan"), -float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_hint", [False, True])
def test_non_finite_weights_are_refused_with_or_without_a_band(bad, dtype, with_hint):
    ps = tensors_with_ties(dtype)
    pruner = GlobalPruner(chunk_numel=100)
    if with_hint:
        pruner.prune_([p.clone() for p in ps], 0.5)
    ps[3][-1] = bad
    before = flat_bits(ps)
    with pytest.raises(ValueError, match=r"non-finite weights \(NaN or inf\); the run diverged"):
        pruner.prune_(ps, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(flat_bits(ps), before))  # nothing was touched
    tried = band_tries(pruner)
    assert tried == (1 if with_hint else 0)


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float16,),
                                    (torch.float32, torch.bfloat16), (torch.float64,)])
def test_zeroing_leaves_exact_positive_zeros_like_masked_fill(dtypes):
    """Pruned weights become +0.0 (the exporter counts zero bits), negative zeros included, whichever way
    the pruner zeroes them; mixed dtypes make a threshold that one of them cannot hold exactly."""
    torch.manual_seed(3)
    ps = [torch.randn(40, 8).to(dtypes[i % len(dtypes)]) for i in range(4)]
    ps[0][0, :5] = -0.0
    ps[1][1, :3] = -ps[1][2, :3]  # ties of opposite signs
    flat = concat_abs(ps)
    want = [p.clone() for p in ps]
    every_tie = int((flat <= flat.kthvalue(700).values).sum())  # a count that takes every tie
    result = GlobalPruner().prune_(ps, every_tie / flat.numel())
    assert result.num_pruned == every_tie
    for p, w in zip(ps, want):
        w.masked_fill_(w.float().abs() <= result.threshold, 0.0)
        assert torch.equal(flat_bits([p])[0], flat_bits([w])[0])
        assert not torch.signbit(p[p == 0]).any()


def test_band_finds_the_threshold_while_a_model_trains():
    """Real weight movements: AdamW steps on a small BERT, a prune to 90% after every step (as after t_f).
    The pruned weights regrow by about the learning rate each step, so the threshold follows the largest
    regrowth; the band must find it nearly every time, and always agree with the radix select."""
    from conftest import tiny_bert

    model = tiny_bert()
    params = TargetSelector().select(model).params
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=40)
    gen = torch.Generator().manual_seed(0)
    pruner = GlobalPruner()
    for _ in range(40):
        ids = torch.randint(0, 128, (8, 16), generator=gen)
        loss = model(input_ids=ids, labels=ids[:, 0] % 2).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            prune_both(params, 0.9, pruner, None)
    assert band_tries(pruner) == 39
    assert pruner.selections["band"] >= 0.8 * 39, pruner.selections
