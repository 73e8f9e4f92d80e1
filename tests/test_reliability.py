"""Reliability holes of issue 29: damaged data, exports and run folders are named (file, line, byte,
tensor) instead of failing with a library's raw error or being used silently; a model folder's own
code never runs, nor prompts, unless asked; a loss that blows up is said once."""

from __future__ import annotations

import builtins
import json
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import tiny_bert
from mgpp.export import MANIFEST_FILE, SPARSE_FILE, SparseFormatError, export_sparse, load_sparse_state_dict, main
from mgpp.pruning import GlobalPruner, TargetSelector


# -- A. data files ------------------------------------------------------------------------------
def sst2_folder(tmp_path, train: bytes):
    sst2 = tmp_path / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    (sst2 / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (sst2 / "train.tsv").write_bytes(train)
    return sst2


def test_a_very_long_tsv_field_is_read_and_one_beyond_the_limit_is_named(tmp_path, monkeypatch):
    """Row 5: a 200,077-character field used to stop csv with 'field larger than field limit (131072)'."""
    from mgpp.tasks import data
    from mgpp.tasks.glue_data import load_glue

    long = "word " * 40015 + "xy"
    assert len(long) == 200_077
    sst2_folder(tmp_path, f"sentence\tlabel\nshort\t0\n{long}\t1\n".encode())
    train = load_glue("sst2", data_dir=str(tmp_path), splits=["train"])["train"]
    assert train["sentence"] == ["short", long] and train["label"] == [0, 1]

    monkeypatch.setattr(data, "MAX_FIELD_CHARS", 100_000)  # beyond the documented limit: file and line named
    with pytest.raises(ValueError, match=r"train.tsv, line 3: a field longer than 100,000 characters .*"
                                         r"MAX_FIELD_CHARS.*\(byte offset 23\)"):
        load_glue("sst2", data_dir=str(tmp_path), splits=["train"])


def test_a_bad_byte_deep_in_a_tsv_is_named_by_line_and_absolute_offset(tmp_path):
    """Row 6: a 0xFF at offset 600,000 was reported at its offset inside an 8 KiB block."""
    from mgpp.tasks.glue_data import load_glue

    row = b"a fine sentence that fills a row of this file nicely " * 6 + b"\t1\n"
    blob = bytearray(b"sentence\tlabel\n" + row * (700_000 // len(row)))
    blob[600_000] = 0xFF
    line = blob[:600_000].count(b"\n") + 1
    sst2_folder(tmp_path, bytes(blob))
    with pytest.raises(ValueError, match=rf"train.tsv, line {line}: not UTF-8 text \(byte 0xff at byte offset "
                                         rf"600000: invalid start byte\)"):
        load_glue("sst2", data_dir=str(tmp_path), splits=["train"])
    assert line > 1000


def test_label_errors_name_the_byte_offset_too(tmp_path):
    from mgpp.tasks.glue_data import load_glue

    sst2_folder(tmp_path, b"\xef\xbb\xbfsentence\tlabel\ngood\t1\nbad\t7\n")  # with a BOM: offsets count it
    with pytest.raises(ValueError, match=r"train.tsv, line 3: label 7 is out of range for SST-2 .*\(byte offset 25\)"):
        load_glue("sst2", data_dir=str(tmp_path), splits=["train"])


def test_squad_summarization_and_corpus_files_name_line_and_absolute_offset(tmp_path):
    from mgpp.tasks.mlm import _load_files
    from mgpp.tasks.squad import read_squad_json
    from mgpp.tasks.summarization import SummarizationTask

    context = "The cat sat on the mat. " * 1000
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 4}]}]}]}]}
    text = json.dumps(squad, indent=1).encode()
    at = text.index(b"mat", 20_000)
    bad = text[:at] + b"\xff" + text[at + 1:]
    (tmp_path / "squad.json").write_bytes(bad)
    line = bad[:at].count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"squad.json, line {line}: not UTF-8 text \(byte 0xff at byte offset {at}:"):
        read_squad_json(tmp_path / "squad.json")

    rows = b"".join(json.dumps({"document": f"doc {i} " * 20, "summary": "s"}).encode() + b"\n" for i in range(400))
    at = rows.index(b"doc 300")
    bad = rows[:at] + b"\xff" + rows[at + 1:]
    (tmp_path / "sum.jsonl").write_bytes(bad)
    task = SummarizationTask(name="x", metrics=["rouge2"], main_metric="rouge2")
    with pytest.raises(ValueError, match=rf"sum.jsonl, line 301: not UTF-8 text \(byte 0xff at byte offset {at}:"):
        task._check_jsonl(str(tmp_path / "sum.jsonl"))

    corpus = b"".join(f"line {i} of a corpus\n".encode() for i in range(1000))
    at = corpus.index(b"line 900 ")
    (tmp_path / "corpus.txt").write_bytes(corpus[:at] + b"\xfe" + corpus[at + 1:])
    with pytest.raises(ValueError, match=rf"corpus.txt, line 901: not UTF-8 text \(byte 0xfe at byte offset {at}:"):
        _load_files([str(tmp_path / "corpus.txt")], "text", None)


# -- B. export ----------------------------------------------------------------------------------
def pruned_bert(sparsity=0.9):
    model = tiny_bert()
    GlobalPruner().prune_(TargetSelector().select(model).params, sparsity)
    return model.eval()


@pytest.fixture(scope="module")
def export_blob(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    export_sparse(pruned_bert(), out)
    return out


@pytest.fixture
def export_dir(export_blob, tmp_path):
    return shutil.copytree(export_blob, tmp_path / "out")


PRUNED = "bert.encoder.layer.0.attention.self.query.weight"


def test_a_manifest_dtype_that_the_stored_values_do_not_fit_is_refused(export_dir):
    """Row 8: a pruned matrix's manifest dtype edited to float16 loaded, its weights rounded through fp16."""
    path = export_dir / MANIFEST_FILE
    original = json.loads(path.read_text())
    assert original["tensors"][PRUNED]["stored"] == "mask+values"
    for key, value, message in [
        ("dtype", "float16", r"manifest says float16 with float32 values"),
        ("values_dtype", "float16", r"its values are float32, the manifest says float16"),
        ("dtype", "int8", r"manifest says int8"),
    ]:
        manifest = json.loads(json.dumps(original))
        manifest["tensors"][PRUNED][key] = value
        path.write_text(json.dumps(manifest))
        with pytest.raises(SparseFormatError, match=rf"tensor '{PRUNED}': .*{message}"):
            load_sparse_state_dict(export_dir)
    manifest = json.loads(json.dumps(original))
    del manifest["tensors"][PRUNED]["shape"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(SparseFormatError, match=rf"{MANIFEST_FILE}: tensor '{PRUNED}' has no 'shape'"):
        load_sparse_state_dict(export_dir)


def test_a_flipped_header_byte_is_a_sparse_format_error_naming_file_and_tensor(export_dir):
    """Row 9: a flipped byte of the safetensors header gave a raw SafetensorError ('line 1 column 5957')."""
    reference = load_sparse_state_dict(export_dir)
    path = export_dir / SPARSE_FILE
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    needle = f'"{PRUNED}::values":{{"dtype":"'.encode()
    at = data.index(needle) + len(needle)
    assert data[at:at + 3] == b"F32"
    path.write_bytes(data[:at] + b"G" + data[at + 1:])  # F32 -> G32: still JSON, no safetensors dtype
    with pytest.raises(SparseFormatError, match=rf"{SPARSE_FILE}: tensor '{PRUNED}' .*dtype 'G32'"):
        load_sparse_state_dict(export_dir)
    for position in range(8, 8 + header_len, 29):  # any flipped byte: an error naming the file, or the same tensors
        flipped = bytearray(data)
        flipped[position] ^= 0x04
        path.write_bytes(bytes(flipped))
        try:
            state = load_sparse_state_dict(export_dir)
        except SparseFormatError as err:
            assert SPARSE_FILE in str(err) or MANIFEST_FILE in str(err), (position, err)
        else:
            assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


def test_a_damaged_config_is_named(export_dir):
    from mgpp.export import load_sparse

    (export_dir / "config.json").write_text('{"architectures": ["BertForSequenceClassification"], ')
    with pytest.raises(SparseFormatError, match=r"config.json"):
        load_sparse(export_dir)


def test_export_refuses_a_folder_that_holds_something_unless_told_to_replace_it(tmp_path, capsys):
    """Row 10: exporting into a folder with another model left its model.safetensors beside the new config."""
    first, second = tiny_bert(), pruned_bert()
    first.save_pretrained(tmp_path / "out")  # another model (dense, not an export) in the folder
    second.save_pretrained(tmp_path / "model")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert main([str(tmp_path / "model"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "is not empty" in err and "--replace" in err and "model.safetensors" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before  # untouched

    assert main([str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--replace"]) == 0
    after = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "model.safetensors" not in after and SPARSE_FILE in after and MANIFEST_FILE in after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]  # no temporary folder left behind
    with pytest.raises(FileExistsError, match="replace=True"):
        export_sparse(second, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    export_sparse(second, tmp_path / "empty")  # an empty folder is fine
    with pytest.raises(ValueError, match="inside"):  # replacing a folder that holds the model would lose it
        export_sparse(tmp_path / "model", tmp_path, replace=True)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_failed_replacement_leaves_the_old_export_whole(tmp_path):
    from safetensors.torch import save_file

    export_sparse(pruned_bert(), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    big = torch.zeros(8, 8)
    big[0, 0] = 1e6  # overflows fp16: the export fails after starting
    (tmp_path / "model").mkdir()
    save_file({"w": big}, str(tmp_path / "model" / "model.safetensors"))
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="overflows fp16"):
        export_sparse(tmp_path / "model", tmp_path / "out", values="fp16", replace=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]


def test_export_help_names_replace(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--replace" in capsys.readouterr().out


# -- C. reports ---------------------------------------------------------------------------------
def fake_run(root, name, seed, acc, method="mgpp"):
    run = root / name
    run.mkdir(parents=True)
    config = {"experiment_name": "fake", "seed": seed, "sparsity": 0.9, "method": {"name": method},
              "task": {"name": "mrpc", "metrics": ["accuracy"], "main_metric": "accuracy",
                       "eval_splits": ["validation"]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps({"eval_accuracy": acc, "sparsity": 0.9}))
    records = [{"kind": "scalars", "step": s, "eval/accuracy": acc} for s in (5, 10, 15)]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return run


def test_a_truncated_log_line_is_skipped_once_and_the_report_says_what_it_left_out(tmp_path, caplog):
    """Row 11: a truncated last line of log.jsonl stopped the report with a raw JSONDecodeError, and beside
    another run of the same seed the damaged run was dropped without a word."""
    from mgpp.report import find_runs
    from mgpp.report.__main__ import main as report_main

    damaged = fake_run(tmp_path / "runs", "a", 1, 0.8)
    with open(damaged / "log.jsonl", "a") as f:
        f.write('{"kind": "scalars", "step": 20, "eval/accu')  # killed mid-write
    run = find_runs([damaged])[0]
    with caplog.at_level(logging.WARNING):
        assert run.scalars("eval/accuracy") == ([5, 10, 15], [0.8] * 3)
        run.scalars("eval/accuracy")
    warnings = [r.getMessage() for r in caplog.records if "log.jsonl" in r.getMessage()]
    assert len(warnings) == 1 and f"{damaged / 'log.jsonl'}, line 4" in warnings[0] and "skipped" in warnings[0]

    fake_run(tmp_path / "runs", "b", 1, 0.7)  # the same cell and seed
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--compare", ""]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Runs left out" in report
    assert f"`{tmp_path / 'runs' / 'b'}`: seed 1 is counted from `{damaged}`" in report
    assert f"`{damaged / 'log.jsonl'}`, line 4" in report


def test_a_truncated_metrics_file_leaves_its_run_out_with_a_warning_and_says_so(tmp_path, caplog):
    """Row 12: a truncated metrics.json stopped the report with a raw JSONDecodeError."""
    from mgpp.report import find_runs
    from mgpp.report.__main__ import main as report_main

    fake_run(tmp_path / "runs", "good", 1, 0.8)
    broken = fake_run(tmp_path / "runs", "broken", 2, 0.7)
    (broken / "metrics.json").write_text('{"eval_accuracy": 0.7, "spars')
    with caplog.at_level(logging.WARNING):
        left_out = []
        runs = find_runs([tmp_path / "runs"], left_out=left_out)
    assert [r.path.name for r in runs] == ["good"]
    assert [(entry.path, "line 1" in entry.reason) for entry in left_out] == [(broken, True)]
    warnings = [r.getMessage() for r in caplog.records if "metrics.json" in r.getMessage()]
    assert len(warnings) == 1 and f"{broken / 'metrics.json'}" in warnings[0] and "line 1" in warnings[0]

    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-figures", "--compare", ""]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"`{broken}`: metrics.json is damaged" in report and "left out" in report

    (tmp_path / "runs" / "good" / "metrics.json").write_text("[1, 2")
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-figures"]) == 1


# -- D. a model folder's own code ---------------------------------------------------------------
def remote_code_folder(tmp_path):
    from mgpp.config import offline_model_path

    folder = tmp_path / "custom"
    folder.mkdir()
    for name in ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "tokenizer.json"):
        shutil.copy(f"{offline_model_path()}/{name}", folder / name)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mgpp-custom", "architectures": ["CustomModel"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForSequenceClassification": "modeling_custom.CustomModel"}}))
    (folder / "configuration_custom.py").write_text("raise SystemExit('the folder code ran')\n")
    (folder / "modeling_custom.py").write_text("raise SystemExit('the folder code ran')\n")
    return folder


def test_a_model_folder_that_needs_its_own_code_is_refused_naming_the_key_without_a_prompt(tmp_path, monkeypatch):
    """Row 13: model=local on a folder with auto_map asked 'run the custom code? [y/N]', then EOFError."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification

    from mgpp.config import ModelConfig
    from mgpp.tasks.base import load_model

    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *a: prompts.append(a) or (_ for _ in ()).throw(EOFError()))
    folder = remote_code_folder(tmp_path)
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": "local", "pretrained": str(folder)})
    assert cfg.trust_remote_code is False
    with pytest.raises(ValueError, match=r"custom.*model.trust_remote_code=true"):
        load_model(cfg, AutoModelForSequenceClassification)
    assert prompts == []

    import mgpp.tasks.base

    seen = {}

    def fake(result):
        def from_pretrained(source, **kwargs):
            seen[result.__name__] = kwargs["trust_remote_code"]
            return result()
        return from_pretrained

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", fake(tiny_bert))
    monkeypatch.setattr(mgpp.tasks.base.AutoTokenizer, "from_pretrained", fake(dict))
    cfg.trust_remote_code = True  # asked for: passed on to both (the folder's code is then the user's call)
    load_model(cfg, AutoModelForSequenceClassification)
    assert seen == {"tiny_bert": True, "dict": True} and prompts == []


def test_trust_remote_code_is_a_model_key_off_by_default():
    from mgpp.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    assert yaml.safe_load(open("conf/model/local.yaml"))["trust_remote_code"] is False


# -- E. a loss that blows up --------------------------------------------------------------------
def test_a_loss_that_grows_by_orders_of_magnitude_warns_once(caplog):
    from mgpp.console import LossWatch

    watch = LossWatch()
    args = SimpleNamespace(learning_rate=1e-3, max_grad_norm=1.0)
    control = SimpleNamespace()

    def feed(step, loss):
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        watch.on_log(args, state, control, logs={"loss": loss, "learning_rate": 1e-3})

    with caplog.at_level(logging.WARNING, logger="mgpp"):
        for step, loss in [(10, 0.7), (20, 0.65), (30, 0.5), (40, 0.6), (50, 3.0)]:
            feed(step, loss)
        assert not caplog.records  # noisy, never 100x
        for step, loss in [(60, 80.0), (70, 900.0), (80, float("inf"))]:
            feed(step, loss)
        watch.on_log(args, SimpleNamespace(global_step=80, is_world_process_zero=True), control,
                     logs={"eval_loss": 1e6})  # evaluations are not the training loss
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "step 60" in messages[0] and "trainer.learning_rate" in messages[0] and "max_grad_norm" in messages[0]
    assert "160x" in messages[0]


def test_the_loss_watch_is_installed_with_the_console():
    from transformers import PrinterCallback

    from mgpp.console import LossWatch, install_console

    for verbose in (False, True):
        trainer = SimpleNamespace(callbacks=[PrinterCallback()])
        trainer.pop_callback = lambda cls, t=trainer: next((t.callbacks.pop(i) for i, c in enumerate(t.callbacks)
                                                             if isinstance(c, cls)), None)
        trainer.add_callback = trainer.callbacks.append
        install_console(trainer, None, "accuracy", verbose)
        assert sum(isinstance(c, LossWatch) for c in trainer.callbacks) == 1


def test_a_byte_offset_on_the_first_line_counts_the_bom(tmp_path):
    """A fault on line 1 of a file that starts with a UTF-8 BOM is named at its offset in the file, BOM included."""
    from mgpp.tasks.data import find_bad_line

    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1,,}\n')  # the second comma: character 8 of the text, byte 11
    assert find_bad_line(path, json_lines=True).endswith("at byte offset 11)")
