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
