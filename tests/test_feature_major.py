"""Feature-major encoders: the same logits as the HF encoder they replace, whatever the layout of each
projection, the attention implementation, the mask or the batch; only plain BERT-style encoders qualify."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForQuestionAnswering

from conftest import VOCAB, tiny_bart, tiny_bert, tiny_deberta
from mgpp.feature_major import FeatureMajorEncoder, FeatureMajorLinear, is_plain_bert_encoder
from mgpp.inference import SparseLinear, sparsify_for_inference
from mgpp.pruning import GlobalPruner, TargetSelector


def block_sparse(out_features, in_features, sparsity, block=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen)
    keep = torch.rand(out_features // block, in_features // block, generator=gen) >= sparsity
    return weight * keep.repeat_interleave(block, 0).repeat_interleave(block, 1)


@pytest.mark.parametrize("layout", ["dense", "csr", "bsr"])
@pytest.mark.parametrize("bias", [True, False])
def test_feature_major_linear_is_w_x_plus_b(layout, bias):
    weight = block_sparse(48, 32, 0.7)
    b = torch.randn(48) if bias else None
    linear = FeatureMajorLinear(weight, b, layout, blocksize=4)
    x = torch.randn(32, 10)
    expected = weight @ x + (b[:, None] if bias else 0)
    assert torch.allclose(linear(x), expected, atol=1e-5)
    if layout != "dense":  # 32-bit indices, the form torch's kernel takes without converting
        assert linear.crow_indices.dtype == linear.col_indices.dtype == torch.int32
    assert f"layout={layout}" in repr(linear) and linear.density == pytest.approx(float((weight != 0).float().mean()))
    with pytest.raises(ValueError, match="layout must be one of"):
        FeatureMajorLinear(weight, b, "coo")


def pruned(model, sparsity=0.9):
    GlobalPruner().prune_(TargetSelector().select(model).params, sparsity)
    return model.eval()


def inputs(batch, seq=20, padded=True):
    ids = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padded and batch > 1:
        mask[1:, seq - 6:] = 0  # padding in all but the first sequence
    return ids, mask


def swapped(model, layout):
    copy_ = copy.deepcopy(model)
    copy_.bert.encoder = FeatureMajorEncoder(model.bert.encoder, lambda name, w, b: FeatureMajorLinear(w, b, layout))
    return copy_


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("layout", ["dense", "csr"])
@pytest.mark.parametrize("batch,padded", [(1, False), (3, False), (3, True)])
def test_the_feature_major_encoder_gives_the_hf_logits(attention, layout, batch, padded):
    model = pruned(tiny_bert())
    model.config._attn_implementation = attention  # the mask reaches the encoder as a float (eager) or a bool (sdpa)
    ids, mask = inputs(batch, padded=padded)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        got = swapped(model, layout)(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs().max() <= 1e-5


def test_token_outputs_match_too():  # a head that reads every token (question answering), not only [CLS]
    torch.manual_seed(0)
    model = pruned(BertForQuestionAnswering(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=64)))
    ids, mask = inputs(2)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask)
        got = swapped(model, "csr")(input_ids=ids, attention_mask=mask)
    assert (got.start_logits - expected.start_logits).abs().max() <= 1e-5
    assert (got.end_logits - expected.end_logits).abs().max() <= 1e-5


def test_only_plain_bert_encoders_qualify():
    assert is_plain_bert_encoder(tiny_bert().bert.encoder)
    assert not is_plain_bert_encoder(tiny_bert().bert)  # no .layer list of BERT layers
    assert not is_plain_bert_encoder(tiny_deberta().deberta.encoder)  # relative attention
    assert not is_plain_bert_encoder(tiny_bart().model.encoder)
    decoder = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, is_decoder=True, add_cross_attention=True)
    from transformers import BertModel
    assert not is_plain_bert_encoder(BertModel(decoder).encoder)
    swapped_model = swapped(pruned(tiny_bert()), "dense")
    ids, _ = inputs(1)
    for flag in ("output_hidden_states", "output_attentions"):  # never an empty tuple in place of the answer
        with pytest.raises(NotImplementedError, match=flag):
            swapped_model(input_ids=ids, **{flag: True})
    with pytest.raises(NotImplementedError, match="tensor attention mask"):
        FeatureMajorEncoder(tiny_bert().bert.encoder, lambda n, w, b: FeatureMajorLinear(w, b))(
            torch.randn(1, 4, 32), attention_mask=object())
    with pytest.raises(NotImplementedError, match="cross-attention"):
        FeatureMajorEncoder(tiny_bert().bert.encoder, lambda n, w, b: FeatureMajorLinear(w, b))(
            torch.randn(1, 4, 32), encoder_hidden_states=torch.randn(1, 4, 32))


def test_sparsify_runs_bert_encoders_feature_major_and_keeps_the_logits():
    model = pruned(tiny_bert())
    ids, mask = inputs(3)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    report = sparsify_for_inference(model, tokens=60, seq_len=20, min_speedup=0.0, reps=2)  # whatever the timing
    assert isinstance(model.bert.encoder, FeatureMajorEncoder) and list(report.encoders) == ["bert.encoder"]
    # the stacked query+key+value, attention output, intermediate, output: 4 choices a layer, all sparse here
    assert len(report.layers) == 8 and len(report.swapped) == 8
    assert report.layers[0].name == "bert.encoder.layer.0.attention.self.query+key+value"
    assert isinstance(model.classifier, nn.Linear)  # the head is not pruned, so not timed
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask).logits - expected).abs().max() <= 1e-5
    assert "bert.encoder: feature-major" in report.table()


def test_an_encoder_that_is_not_faster_is_left_and_its_layers_chosen_one_by_one():
    model = pruned(tiny_bert())
    report = sparsify_for_inference(model, tokens=16, min_speedup=float("inf"), reps=2)
    assert report.encoders_kept == {"bert.encoder": "no layer faster sparse"} and not report.encoders
    assert type(model.bert.encoder).__name__ == "BertEncoder" and not report.swapped
    assert len(report.layers) == 12  # timed as row-major layers instead
    assert "left as it was" in report.table()


def test_feature_major_off_and_include_are_honoured():
    model = pruned(tiny_bert())
    report = sparsify_for_inference(copy.deepcopy(model), tokens=16, min_speedup=0.0, reps=2, feature_major=False)
    assert not report.encoders and len(report.swapped) == 12
    sparse = copy.deepcopy(model)
    report = sparsify_for_inference(sparse, tokens=16, seq_len=16, min_speedup=0.0, reps=2,
                                    include=lambda name: "attention.self.key" not in name)
    assert isinstance(sparse.bert.encoder, FeatureMajorEncoder)
    assert sparse.bert.encoder.layer[0].qkv.layout == "dense"  # key excluded: its stacked matrix stays dense
    assert not any("query+key+value" in c.name for c in report.layers)
    assert not any(isinstance(m, SparseLinear) for m in sparse.modules())


def test_block_sparse_encoders_are_offered_bsr():
    model = tiny_bert().eval()
    with torch.no_grad():
        for module in model.bert.encoder.modules():
            if type(module) is nn.Linear:
                module.weight.copy_(block_sparse(*module.weight.shape, 0.9))
    ids, mask = inputs(2)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    report = sparsify_for_inference(model, tokens=40, seq_len=20, min_speedup=0.0, reps=2, blocksize=4)
    assert all("bsr" in c.times_ms for c in report.layers)
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask).logits - expected).abs().max() <= 1e-5


@pytest.mark.compiles
def test_compiled_feature_major_layers_give_the_same_logits():
    model = pruned(tiny_bert())
    ids, mask = inputs(2)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    report = sparsify_for_inference(model, tokens=40, seq_len=20, min_speedup=0.0, reps=2, compile=True)
    assert report.compiled and "(compiled)" in report.table()
    layers = model.bert.encoder.layer  # one compiled function for every layer (one compile, not one per layer)
    assert len({id(layer.context) for layer in layers}) == 1 and len({id(layer.output_norm.kernel) for layer in layers}) == 1
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask).logits - expected).abs().max() <= 1e-5


def test_the_pipeline_benchmark_runs_export_load_sparsify_and_keeps_every_dev_prediction(tmp_path):
    """benchmarks/bench_pipeline.py on a tiny pruned BERT with MiniLM's tokenizer (make pipeline, minus training)."""
    import json
    import sys

    from transformers import AutoTokenizer, BertForSequenceClassification

    from conftest import ROOT
    from mgpp.config import offline_model_path

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_pipeline

    tokenizer = AutoTokenizer.from_pretrained(offline_model_path())
    torch.manual_seed(0)
    model = pruned(BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                            num_hidden_layers=2, num_attention_heads=2,
                                                            intermediate_size=64, max_position_embeddings=128)))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert bench_pipeline.main(["--model-dir", str(tmp_path / "model"), "--work", str(tmp_path / "work"),
                                "--reps", "2", "--batches", "1", "--threads", "1", "--min-speedup", "0", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "pipeline_cpu.json").read_text())
    assert result["dev"]["agree_batch1"] == 1.0 and set(result["latency"]) == {"1"}
    assert {"export", "load", "sparsify (batch 1)", "dev set, sparse (chosen for batch 1)"} <= set(result["stages_s"])
    report = (tmp_path / "out" / "pipeline_cpu.md").read_text()
    assert "SST-2 dev (872 sentences" in report and "bert.encoder: feature-major" in report  # really sparse
