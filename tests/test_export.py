"""The sparse export: exact round trips, what it saves, and errors that name the damaged tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import VOCAB, tiny_bert
from mgpp.export import (MANIFEST_FILE, SPARSE_FILE, VALUE_DTYPES, SparseFormatError, export_sparse, load_sparse,
                         load_sparse_state_dict, main, nm_pattern, pack, unpack)
from mgpp.pruning import GlobalPruner, TargetSelector


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor: equality of these is bit identity (-0.0 and NaN payloads included)."""
    return t.contiguous().view(torch.uint8)


SHAPES = [(1,), (7,), (3, 5), (8, 8), (13, 1), (1, 17), (2, 3, 4), (4, 1, 9, 2), (0, 4), (64, 33)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pack_unpack_round_trips_random_masks_of_every_shape(dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        for density in (0.0, 0.03, 0.5, 0.97, 1.0):
            t = torch.randn(shape, generator=gen).to(dtype)
            t[torch.rand(shape, generator=gen) >= density] = 0.0
            if t.numel():
                t.view(-1)[0] = -0.0  # a negative zero survives as itself
            mask, values = pack(t)
            assert mask.dtype == torch.uint8 and mask.numel() == (t.numel() + 7) // 8
            back = unpack(mask, values, t.shape, dtype)
            assert back.shape == t.shape and torch.equal(bits(back), bits(t)), (shape, density)


def write_model_dir(path, state):
    path.mkdir()
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path


@pytest.mark.parametrize("values", ["keep", "fp32", "fp16", "bf16"])
def test_export_round_trips_a_state_dict_of_mixed_dtypes(tmp_path, values):
    gen = torch.Generator().manual_seed(1)
    state = {}
    for i, (shape, dtype) in enumerate([((32, 48), torch.float32), ((48, 32), torch.float16), ((16, 16, 3), torch.bfloat16),
                                        ((10, 24), torch.float32), ((24,), torch.float32), ((5,), torch.int64)]):
        t = torch.randn(shape, generator=gen).to(dtype) if dtype.is_floating_point else torch.arange(5)
        if dtype.is_floating_point and len(shape) >= 2 and i != 3:  # tensor 3 stays dense (no zeros)
            t[torch.rand(shape, generator=gen) < 0.9] = 0.0
        state[f"layer.{i}.weight"] = t
    src = write_model_dir(tmp_path / "model", state)
    summary = export_sparse(src, tmp_path / "out", values=values)
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["tensors"]
    assert [manifest[f"layer.{i}.weight"]["stored"] for i in range(6)] == ["mask+values"] * 3 + ["dense"] * 3
    assert summary.num_pruned_tensors == 3 and (tmp_path / "out" / "config.json").is_file()
    back = load_sparse_state_dict(tmp_path / "out")
    assert back.keys() == state.keys()
    for name, t in state.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        entry = manifest[name]
        if entry["stored"] == "mask+values":  # never widened: fp32 values of an fp16 matrix stay fp16
            requested = VALUE_DTYPES[values] or t.dtype
            widening = torch.finfo(requested).bits > torch.finfo(t.dtype).bits
            assert entry["values_dtype"] == str(t.dtype if widening else requested).removeprefix("torch.")
        if entry["stored"] == "dense" or entry["values_dtype"] == entry["dtype"]:
            assert torch.equal(bits(back[name]), bits(t)), name
        else:  # rounded values, the same zeros
            assert torch.equal(back[name] == 0, t == 0)
            assert torch.allclose(back[name].float(), t.float(), rtol=1e-2, atol=1e-3)


def pruned_bert(sparsity=0.9):
    model = tiny_bert()
    targets = TargetSelector().select(model)
    GlobalPruner().prune_(targets.params, sparsity)
    return model.eval()


def test_export_of_a_pruned_model_reloads_bit_identical_with_equal_logits(tmp_path):
    model = pruned_bert()
    model.save_pretrained(tmp_path / "model")
    summary = export_sparse(tmp_path / "model", tmp_path / "out")
    assert summary.num_pruned_tensors == 12 and abs(summary.pruned_sparsity - 0.9) < 1e-3
    # per pruned matrix: 1 bit per weight + 4 bytes per kept one, against 4 bytes per weight
    assert summary.pruned_bytes / summary.pruned_dense_bytes == pytest.approx(1 / 32 + 0.1, abs=5e-3)
    loaded = load_sparse(tmp_path / "out")
    assert type(loaded) is type(model) and not loaded.training
    ref = model.state_dict()
    assert loaded.state_dict().keys() == ref.keys()
    assert all(torch.equal(bits(v), bits(ref[k])) for k, v in loaded.state_dict().items())
    ids = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_export_of_an_in_memory_model_and_the_command_line(tmp_path, capsys):
    model = pruned_bert(0.8)
    export_sparse(model, tmp_path / "direct")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in load_sparse(tmp_path / "direct").state_dict().items())
    model.save_pretrained(tmp_path / "model")
    assert main([str(tmp_path / "model"), "--out", str(tmp_path / "cli"), "--values", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "pruned matrices (12, 80.0% zeros, values fp16)" in out and "rounded to fp16" in out
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    assert "no model folder" in capsys.readouterr().err


def test_a_model_that_is_not_sparse_exports_dense_with_a_warning(tmp_path):
    model = tiny_bert().eval()
    with pytest.warns(UserWarning, match="does not look pruned"):
        summary = export_sparse(model, tmp_path / "out")
    assert summary.num_pruned_tensors == 0
    loaded = load_sparse(tmp_path / "out")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.fixture
def export_dir(tmp_path):
    export_sparse(pruned_bert(), tmp_path / "out")
    return tmp_path / "out"


def test_a_truncated_file_names_the_first_tensor_it_lost(export_dir):
    path = export_dir / SPARSE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SparseFormatError, match=r"truncated: tensor '[\w.]+'"):
        load_sparse_state_dict(export_dir)
    path.write_bytes(data[:5])
    with pytest.raises(SparseFormatError, match="truncated"):
        load_sparse_state_dict(export_dir)


def test_a_flipped_byte_names_the_corrupted_tensor(export_dir):
    from mgpp.export import _safetensors_extents

    path = export_dir / SPARSE_FILE
    name = "bert.encoder.layer.1.output.dense.weight"
    start, _ = _safetensors_extents(path)[name + "::values"]
    data = bytearray(path.read_bytes())
    data[start + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SparseFormatError, match=f"tensor '{name}' is corrupted .*values"):
        load_sparse_state_dict(export_dir)


def test_a_manifest_that_does_not_match_its_tensors_names_the_tensor(export_dir):
    path = export_dir / MANIFEST_FILE
    original = json.loads(path.read_text())
    name = "bert.encoder.layer.0.attention.self.query.weight"

    manifest = json.loads(json.dumps(original))
    manifest["tensors"][name]["nnz"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(SparseFormatError, match=f"tensor '{name}': its mask keeps"):
        load_sparse_state_dict(export_dir)

    manifest = json.loads(json.dumps(original))
    manifest["tensors"][name]["shape"] = [32, 40]
    path.write_text(json.dumps(manifest))
    with pytest.raises(SparseFormatError, match=f"tensor '{name}': its mask holds"):
        load_sparse_state_dict(export_dir)

    manifest = json.loads(json.dumps(original))
    del manifest["tensors"][name]
    path.write_text(json.dumps(manifest))
    with pytest.raises(SparseFormatError, match=f"'{name}::mask' is in the file but not in the manifest"):
        load_sparse_state_dict(export_dir)

    path.write_text("{not json")
    with pytest.raises(SparseFormatError, match="not valid JSON"):
        load_sparse_state_dict(export_dir)


def test_nm_pattern_is_recorded():
    t = torch.randn(8, 16)
    assert nm_pattern(t) is None
    groups = t.view(-1, 4)
    groups[:, 2:] = 0  # 2 of every 4 zero
    assert nm_pattern(t) == "2:4"
    t.view(-1, 8)[:, 1:] = 0
    assert nm_pattern(t) == "1:8"


def test_a_sharded_folder_is_read_through_its_index(tmp_path):
    model = pruned_bert()
    model.save_pretrained(tmp_path / "model", max_shard_size="40KB")
    assert (tmp_path / "model" / "model.safetensors.index.json").is_file()
    save_file({"stale": torch.zeros(3)}, str(tmp_path / "model" / "adapter_model.safetensors"))  # not the model's
    export_sparse(tmp_path / "model", tmp_path / "out")
    loaded = load_sparse(tmp_path / "out").state_dict()
    assert all(torch.equal(bits(v), bits(model.state_dict()[k])) for k, v in loaded.items())


def test_scalars_round_trip_and_an_overflowing_cast_is_refused(tmp_path):
    big = torch.zeros(8, 8)
    big[0, 0] = 1e6  # beyond fp16's 65504
    src = write_model_dir(tmp_path / "model", {"logit_scale": torch.tensor(2.5), "w": big})
    export_sparse(src, tmp_path / "out")
    assert torch.equal(load_sparse_state_dict(tmp_path / "out")["logit_scale"], torch.tensor(2.5))
    with pytest.raises(ValueError, match="tensor 'w': a kept value overflows fp16"):
        export_sparse(src, tmp_path / "out16", values="fp16")


def test_an_export_that_does_not_fit_the_model_class_is_refused(export_dir):
    from transformers import BertForMaskedLM

    with pytest.raises(SparseFormatError, match="does not fit BertForMaskedLM"):
        load_sparse(export_dir, model_class=BertForMaskedLM)
