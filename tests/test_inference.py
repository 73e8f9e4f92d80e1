"""Sparse CPU inference: SparseLinear computes what nn.Linear does; the swap keeps the logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import VOCAB, tiny_bert
from mgpp.inference import SparseLinear, empty_block_fraction, sparsify_for_inference
from mgpp.pruning import GlobalPruner, TargetSelector


def sparse_linear(out_features, in_features, sparsity, bias=True, block=None, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        if block:  # whole blocks of zeros
            keep = torch.rand(out_features // block, in_features // block) >= sparsity
            linear.weight.mul_(keep.repeat_interleave(block, 0).repeat_interleave(block, 1))
        else:
            linear.weight[torch.rand(out_features, in_features) < sparsity] = 0.0
    return linear


@pytest.mark.parametrize("layout", ["csr", "bsr"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (2, 7), (3, 1, 4)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_sparse_linear_matches_the_dense_layer(layout, bias, lead, contiguous):
    linear = sparse_linear(48, 32, 0.9, bias=bias, block=16 if layout == "bsr" else None)
    sparse = SparseLinear.from_linear(linear, layout, blocksize=16, contiguous_output=contiguous)
    x = torch.randn(*lead, 32)
    with torch.no_grad():
        y, expected = sparse(x), linear(x)
    assert y.shape == expected.shape and y.is_contiguous() == (contiguous or len(lead) == 1 and lead[0] == 1)
    assert torch.allclose(y, expected, atol=1e-6, rtol=1e-5)
    assert f"layout={layout}" in repr(sparse)


def test_empty_block_fraction():
    assert empty_block_fraction(sparse_linear(64, 64, 0.5, block=16).weight, 16) == pytest.approx(0.5, abs=0.3)
    assert empty_block_fraction(sparse_linear(64, 64, 0.9).weight, 16) == 0.0  # unstructured: no empty block
    assert empty_block_fraction(torch.zeros(10, 16), 16) == 0.0  # does not tile


def pruned_bert(sparsity=0.9):
    model = tiny_bert().eval()
    GlobalPruner().prune_(TargetSelector().select(model).params, sparsity)
    return model


@pytest.mark.parametrize("contiguous", [True, False])
def test_swapping_every_pruned_layer_keeps_the_logits(contiguous):
    model = pruned_bert()
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    sparse = copy.deepcopy(model)
    report = sparsify_for_inference(sparse, tokens=60, min_speedup=0.0, reps=2,  # swap whatever the timing says
                                    contiguous_output=contiguous, feature_major=False)
    assert len(report.layers) == 12 and len(report.swapped) == 12  # the 12 pruned matrices; head and pooler dense
    assert sum(isinstance(m, SparseLinear) for m in sparse.modules()) == 12
    assert isinstance(sparse.classifier, nn.Linear) and isinstance(sparse.bert.pooler.dense, nn.Linear)
    with torch.no_grad():
        assert (sparse(input_ids=ids).logits - expected).abs().max() <= 1e-5
    assert "12 of 12 linear layers sparse" in report.table()


def test_layers_that_are_not_faster_or_not_sparse_stay_dense():
    model = pruned_bert()
    report = sparsify_for_inference(model, tokens=16, min_speedup=float("inf"), reps=2, feature_major=False)
    assert report.layers and not report.swapped
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    dense = tiny_bert()
    assert not sparsify_for_inference(dense, tokens=16, reps=2).layers  # nothing sparse enough to time
    with pytest.raises(ValueError, match="unknown layouts"):
        sparsify_for_inference(model, layouts=("coo",))


def test_block_sparse_layers_are_timed_in_bsr_too():
    model = nn.Sequential(sparse_linear(64, 32, 0.75, block=16), nn.ReLU(), sparse_linear(16, 64, 0.9))
    x = torch.randn(4, 32)
    with torch.no_grad():
        expected = model(x)
    report = sparsify_for_inference(model, tokens=8, min_speedup=0.0, reps=2, blocksize=16)
    assert "bsr" in report.layers[0].times_ms and "bsr" not in report.layers[1].times_ms  # unstructured: no BSR
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)
