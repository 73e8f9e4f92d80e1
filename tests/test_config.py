"""Every option of every config group composes; the engine objects build; bad values are named."""

import dataclasses
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

import mgpp.config  # noqa: F401  registers the schema and the offline_model resolver
from mgpp.config import build, validate
from mgpp.methods import build_method

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["output_dir=/tmp/unused", *overrides])


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    value = f"[{option}]" if group == "logger" else option
    extra = {("model", "local"): ["model.pretrained=/some/folder"],
             ("pruning", "semi_structured"): ["sparsity=0.5"],
             ("recipe", "glue_standard"): ["task=mrpc"],  # a per-task table: MRPC's entry is the one searched
             ("sweep", "dense_search"): ["task=mrpc"]}.get((group, option), [])
    cfg = compose_train(f"{group}={value}", *extra)
    validate(cfg)
    method = build_method(cfg)
    assert method.targets.include and method.pruner is not None
    task = build(cfg.task)
    assert task.main_metric in task.metrics


def test_groups_cover_the_documented_options():
    assert options("method") == ["dense", "gmp", "l2", "mgpp", "pa", "sparse_transfer"]
    assert set(options("task")) >= set("mnli qnli qqp rte sst2 mrpc cola stsb squad squad_dev_split".split())
    assert options("prior") == ["l1", "l2", "mgp", "none"]
    assert set(options("model")) >= {"minilm", "bert_base", "deberta_v3_base", "bart_large", "tiny_bert"}
    assert options("logger") == ["jsonl", "tensorboard", "wandb"]


@pytest.mark.parametrize("method,prior,schedule", [
    ("dense", "NoPrior", "NoPruning"), ("gmp", "NoPrior", "CubicSparsity"), ("l2", "L2", "CubicSparsity"),
    ("mgpp", "MixtureGaussian", "CubicSparsity"), ("pa", "MixtureGaussian", "PriorAnnealing"),
])
def test_methods_pick_their_prior_and_schedule(method, prior, schedule):
    built = build_method(compose_train(f"method={method}", "sparsity=0.8", "sigma1_sq=0.1"))
    assert type(built.prior).__name__ == prior and type(built.schedule).__name__ == schedule
    assert built.schedule.final_sparsity == (0.0 if method == "dense" else 0.8)
    if prior != "NoPrior":
        assert (built.prior.sigma1_sq if prior == "MixtureGaussian" else built.prior.sigma_sq) == 0.1


def test_method_and_prior_mix_from_the_command_line():
    built = build_method(compose_train("method=gmp", "prior=mgp", "sigma0_sq=1e-9"))
    assert type(built.prior).__name__ == "MixtureGaussian" and built.prior.sigma0_sq == 1e-9


def test_each_knob_is_defined_once_and_read_by_every_file():
    """lam, sigma0_sq, sigma1_sq, t_i, t_f, prune_every are top-level, like sparsity: one override
    reaches the prior and schedule files of any method; no prior or schedule file restates a value."""
    mgpp = build_method(compose_train("method=mgpp", "lam=1e-5", "sigma0_sq=1e-9", "sigma1_sq=0.1", "t_i=3",
                                      "t_f=9", "prune_every=2"))
    assert (mgpp.prior.lam, mgpp.prior.sigma0_sq, mgpp.prior.sigma1_sq) == (1e-5, 1e-9, 0.1)
    assert (mgpp.schedule.t_i, mgpp.schedule.t_f, mgpp.schedule.prune_every) == (3, 9, 2)
    assert build_method(compose_train("method=l2", "sigma1_sq=0.1")).prior.sigma_sq == 0.1
    pa = build_method(compose_train("method=pa", "t_i=3", "t_f=9"))
    assert (pa.schedule.t_i, pa.schedule.t_f) == (3, 9)
    for group in ("prior", "schedule"):
        for path in (CONF / group).glob("*.yaml"):
            values = [ln for ln in path.read_text().splitlines() if re.match(r"^(lam|sigma[01]_sq|t_i|t_f|prune_every):", ln)]
            assert all("${" in ln for ln in values), (path.name, values)  # read from the top level, never restated


@pytest.mark.parametrize("group,option", [(g, o) for g in ("prior", "schedule") for o in options(g)])
def test_prior_and_schedule_files_list_exactly_their_class_arguments(group, option):
    import inspect

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    params = inspect.signature(get_class(node._target_)).parameters
    assert set(node) - {"_target_"} <= set(params), (option, set(node) - set(params))


def test_a_key_the_chosen_class_does_not_take_fails_by_name():
    with pytest.raises(ConfigCompositionException) as err:  # the Laplace prior has no slab variance
        compose_train("prior=l1", "prior.sigma1_sq=0.1")
    assert "sigma1_sq" in str(err.value.__cause__ or err.value)


def test_schema_defaults_are_the_yaml_defaults():
    from omegaconf import OmegaConf

    from mgpp.config import ReportConfig, TrainConfig, TrainerConfig

    raw = OmegaConf.load(CONF / "train.yaml")
    for f in dataclasses.fields(TrainConfig):
        if f.name in raw and not OmegaConf.is_interpolation(raw, f.name) and not isinstance(raw[f.name], (dict,)) \
                and f.default is not dataclasses.MISSING and f.name not in ("recipe", "paper"):
            assert raw[f.name] == f.default, f.name
    report = ReportConfig()
    assert {k: getattr(report, k) for k in raw.report} == dict(raw.report)
    trainer_yaml = OmegaConf.load(CONF / "trainer" / "default.yaml")
    defaults = TrainerConfig()
    for key, value in trainer_yaml.items():
        if key != "extra":
            assert getattr(defaults, key) == value, key


def test_misspelt_key_is_named():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train("trainer.lerning_rate=1e-4")
    assert "lerning_rate" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_is_named():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_train("trainer.learning_rate=fast")
    assert "learning_rate" in str(err.value) + str(err.value.__cause__)


def test_unknown_group_option_is_named():
    with pytest.raises(ConfigCompositionException, match="task/mnlii"):
        compose_train("task=mnlii")


def test_a_recipe_without_the_tasks_entry_is_named():
    with pytest.raises(ValueError, match=r"recipe has no entry for task sst2 \(trainer.learning_rate reads "
                                         r"recipe.sst2.learning_rate\)"):
        validate(compose_train("recipe=glue_standard", "task=sst2"))


@pytest.mark.parametrize("override,message", [
    ("sparsity=1.5", "sparsity=1.5"),
    ("sparsity=-0.1", "sparsity=-0.1"),
    ("+trainer.extra.warmup_ratio=0.1", "warmup_ratio"),
    # refused before anything loads, by key (once torch's words after the data loaded; save_steps=0 ran with no
    # checkpoint at all)
    ("trainer.save_steps=0", "trainer.save_steps must be positive"),
    ("trainer.eval_steps=0", "trainer.eval_steps must be positive"),
    ("trainer.logging_steps=-1", "trainer.logging_steps must be positive"),
    ("trainer.learning_rate=-1e-4", "trainer.learning_rate must not be negative"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size must be at least 1"),
])
def test_impossible_values_are_named(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate(compose_train(override))


@pytest.mark.parametrize("override,message", [
    ("prior.lam=1.5", "lam=1.5"),
    ("prior.sigma0_sq=0.5", "sigma0_sq=0.5 >= sigma1_sq=0.05"),
    ("t_i=0.8", "t_i=0.8, t_f=0.7"),
    ("lam=1.5", "lam=1.5"),
])
def test_bad_engine_values_fail_when_built(override, message):
    with pytest.raises(ValueError, match=message):
        build_method(compose_train(override))


@pytest.mark.parametrize("override,message", [
    ("task.main_metric=f1", "task: main_metric='f1' is not one of metrics=['accuracy']"),
    ("task.num_labels=0", "task: num_labels must be >= 1"),
    ("task.num_labels=3", "task: num_labels=3 does not match GLUE sst2 (2 classes)"),
    ("task.max_length=4", "task: max_length must be at least 8 tokens"),
])
def test_bad_task_values_fail_when_built(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build(compose_train(override).task)


def test_prior_errors_name_the_config_node():
    with pytest.raises(ValueError, match=r"^prior: lam"):
        build_method(compose_train("prior.lam=2"))


def test_structured_schema_rejects_unknown_top_level_key():
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)):
        compose_train("sparsty=0.5")


def test_every_training_arguments_field_is_a_trainer_key():
    import dataclasses

    from transformers import TrainingArguments

    from mgpp.config import OWNED_TRAINER_FIELDS

    cfg = compose_train("trainer.gradient_checkpointing=true", "trainer.label_smoothing_factor=0.1",
                        "trainer.adam_beta2=0.98")
    validate(cfg)
    assert cfg.trainer.gradient_checkpointing is True and cfg.trainer.label_smoothing_factor == 0.1
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    assert fields <= set(cfg.trainer)  # every field, at the Trainer's default unless set
    with pytest.raises(ConfigCompositionException) as err:  # a typo still fails, by name
        compose_train("trainer.gradient_checkpointng=true")
    assert "gradient_checkpointng" in str(err.value.__cause__ or err.value)
    for owned in OWNED_TRAINER_FIELDS:
        bad = compose_train(f"trainer.{owned}={'[wandb]' if owned == 'report_to' else '3'}")
        with pytest.raises(ValueError, match=f"trainer.{owned} is set by mgpp itself"):
            validate(bad)


def test_training_arguments_are_the_trainer_keys(tmp_path):
    from mgpp.train import _training_arguments

    cfg = compose_train("trainer.gradient_checkpointing=true", "trainer.dataloader_drop_last=true",
                        "trainer.adam_beta2=0.98", "seed=7")
    args = _training_arguments(cfg, tmp_path, build(cfg.task))
    assert args.gradient_checkpointing and args.dataloader_drop_last and args.adam_beta2 == 0.98
    assert args.seed == 7 and args.report_to in ([], "none", ["none"]) and args.output_dir == str(tmp_path / "checkpoints")


def test_resume_compares_the_keys_both_configs_have():
    from mgpp.run_folder import config_changes as _config_changes

    saved = {"sparsity": 0.9, "trainer": {"lr": 1e-4, "extra": {"old_knob": 1}},
             "model": {"pretrained": "/a/venv/lib/python3.11/site-packages/pkg/model"}}
    current = {"sparsity": 0.9, "trainer": {"lr": 1e-4, "new_field": "x", "extra": {}},
               "model": {"pretrained": "/other/.venv/lib/python3.11/site-packages/pkg/model"}}
    assert _config_changes(saved, current) == []  # added/removed keys and the venv's location do not count
    current["trainer"]["lr"] = 3e-4
    assert _config_changes(saved, current) == ["trainer.lr"]


@pytest.mark.parametrize("override,message", [
    ("+sparsty=0.5", "sparsty (did you mean sparsity?)"),
    ("+trainer.learnig_rate=0.1", "trainer.learnig_rate (did you mean trainer.learning_rate?)"),
    ("trainer.gradient_accumulation_steps=0", "gradient_accumulation_steps must be at least 1"),
    ("report.histogram_bins=0", "report.histogram_bins must be >= 1"),
])
def test_silent_mistakes_are_refused_by_name(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(compose_train(override))
    with pytest.raises(ValueError, match="set trainer.dataloader_drop_last directly"):  # one place per field
        validate(compose_train("+trainer.extra.dataloader_drop_last=true"))


def test_fp16_on_a_cpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="fp16=true needs a CUDA GPU"):
        validate(compose_train("trainer.fp16=true"))


def test_an_explicit_data_root_never_falls_back_to_the_hub(tmp_path):
    from mgpp.tasks.glue_data import load_glue

    (tmp_path / "glue" / "SST-2").mkdir(parents=True)  # a data root with GLUE, but no RTE in it
    with pytest.raises(FileNotFoundError, match="no GLUE rte data in"):
        load_glue("rte", data_dir=str(tmp_path))


def test_model_folders_that_are_not_models_are_named(tmp_path):
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification

    from mgpp.tasks.base import load_model

    missing = OmegaConf.create({"name": "local", "pretrained": str(tmp_path / "nowhere"), "config": None,
                                "tokenizer": None})
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model(missing, AutoModelForSequenceClassification)
    (tmp_path / "empty").mkdir()
    empty = OmegaConf.create({"name": "local", "pretrained": str(tmp_path / "empty"), "config": None, "tokenizer": None})
    with pytest.raises(FileNotFoundError, match=r"not a model folder: .*empty \(no config.json\)"):
        load_model(empty, AutoModelForSequenceClassification)


def test_run_folder_rules(tmp_path):
    """A failed start does not lock the folder against a corrected config; resume=false moves old
    checkpoints aside; a finished or checkpointed run configured differently is refused."""
    import json

    import yaml

    from mgpp.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"sparsity": 0.9}))
    folder.check_resumable({"sparsity": 0.8})  # only a config: a start that failed, nothing to resume
    import torch
    from safetensors.torch import save_file

    (tmp_path / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-20" / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "checkpoints" / "checkpoint-20" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"configured differently \(sparsity\)"):
        folder.check_resumable({"sparsity": 0.8})
    (tmp_path / "metrics.json").write_text(json.dumps({"eval_accuracy": 0.5}))
    aside = folder.start_afresh()
    assert aside == tmp_path / "checkpoints.old-1" and (aside / "checkpoint-20").is_dir()
    assert folder.last_checkpoint() is None and folder.finished_metrics() is None


@pytest.mark.parametrize("content,message", [
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n", r"line 3: label 'maybe' is not"),
    ("index\tsentence1\tsentence2\tlabel\n", "no examples"),
    ("", "empty file"),
])
def test_bad_glue_files_are_named_at_load(tmp_path, content, message):
    from mgpp.tasks.glue_data import load_glue

    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    (rte / "train.tsv").write_text(content)
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(ValueError, match=message):
        load_glue("rte", data_dir=str(tmp_path))


def test_out_of_range_and_non_utf8_glue_files_are_named(tmp_path):
    from mgpp.tasks.glue_data import load_glue

    sst2 = tmp_path / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    (sst2 / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (sst2 / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(ValueError, match=r"line 3: label 7 is out of range for SST-2"):
        load_glue("sst2", data_dir=str(tmp_path))
    (sst2 / "train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe bad\t1\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_glue("sst2", data_dir=str(tmp_path))


def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(tmp_path, caplog):
    import json

    import torch
    from safetensors.torch import save_file

    from mgpp.run_folder import RunFolder

    def checkpoint(step):
        path = tmp_path / "checkpoints" / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"w": torch.randn(64, 64)}, str(path / "model.safetensors"))
        return path

    checkpoint(10)
    newest = checkpoint(20)
    blob = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(blob[: len(blob) // 2])  # killed mid-write
    folder = RunFolder(tmp_path)
    assert folder.last_checkpoint().endswith("checkpoint-10")
    assert "skipping damaged checkpoint-20 (not sealed; model.safetensors holds" in caplog.text
    (tmp_path / "checkpoints" / "checkpoint-10" / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match="no intact checkpoint to resume from.*resume=false"):
        folder.last_checkpoint()


def test_one_live_run_per_folder(tmp_path):
    """The folder's lock is an OS lock: a second holder is refused, naming the first; a lock whose
    process died (kill -9) is free again, whatever its files say."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from mgpp.run_folder import FolderInUse, RunFolder

    first, second = RunFolder(tmp_path), RunFolder(tmp_path)
    first.acquire()
    host = socket.gethostname()
    with pytest.raises(FolderInUse, match=f"in use by another run \\(pid {os.getpid()} on {host}\\)"):
        second.acquire()
    first.release()
    assert not (tmp_path / "run.lock").exists()
    holder = ("from mgpp.run_folder import RunFolder; import os, sys; RunFolder(sys.argv[1]).acquire(); "
              "os.kill(os.getpid(), 9)")  # dies holding it, leaving its run.lock behind
    subprocess.run([sys.executable, "-c", holder, str(tmp_path)])
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] != os.getpid()
    second.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    second.release()


def test_bad_squad_and_summarization_files_are_named(tmp_path):
    import json

    from mgpp.tasks.squad import read_squad_json
    from mgpp.tasks.summarization import SummarizationTask

    squad = {"data": [{"title": "t", "paragraphs": [{"context": "The cat sat.", "qas": [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 4}]},
        {"id": "q2", "question": "Where?", "answers": [{"text": "mat", "answer_start": 8}]}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    with pytest.raises(ValueError, match=r"question 'q2': answer 'mat' is not at answer_start=8"):
        read_squad_json(tmp_path / "squad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not JSON"):
        read_squad_json(tmp_path / "broken.json")

    task = SummarizationTask(name="x", metrics=["rouge2"], main_metric="rouge2")
    (tmp_path / "sum.jsonl").write_text('{"document": "a b c", "summary": "a"}\n{"document": "d e", "summary": ""}\n')
    with pytest.raises(ValueError, match=r"sum.jsonl, line 2: no text in field 'summary'"):
        task._check_jsonl(str(tmp_path / "sum.jsonl"))


def test_a_local_squad_folder_without_its_train_file_is_named(tmp_path):
    import json

    from mgpp.tasks.squad import SquadTask

    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "a b", "qas": [{"id": "1", "question": "q", "answers": [{"text": "a", "answer_start": 0}]}]}]}]}))
    task = SquadTask(name="squad", metrics=["exact_match", "f1"], main_metric="f1")
    with pytest.raises(FileNotFoundError, match="train-v1.1.json.*use task=squad_dev_split"):
        task._raw(str(tmp_path), seed=0)
