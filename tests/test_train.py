"""``python -m mgpp.train`` end to end on a tiny BERT and the real GLUE files in ../shared/data."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from mgpp.tasks.glue_data import find_glue_dir, load_glue
from mgpp.pruning import TargetSelector, num_to_prune

from conftest import train_in_process

ROOT = Path(__file__).resolve().parents[1]
GLUE = find_glue_dir()
needs_glue = pytest.mark.skipif(GLUE is None, reason="no local GLUE folder (../shared/data/glue)")

QUICK = ["max_train_samples=256", "max_eval_samples=64", "trainer.max_steps=24",
         "trainer.logging_steps=4", "trainer.eval_steps=12", "report.histogram_every=8",
         "trainer.per_device_train_batch_size=16", "trainer.disable_tqdm=true", "trainer.learning_rate=1e-3"]
PRUNING_KEYS = ["pruning/target_sparsity", "pruning/zero_fraction_now", "pruning/threshold", "pruning/kept_min_magnitude",
                "pruning/prior_crossover", "pruning/prior_weight", "pruning/prior_penalty"]


def run_train(*overrides, check=True):
    """``python -m mgpp.train *overrides``, in this process (conftest.train_in_process)."""
    proc = train_in_process(*overrides)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@needs_glue
@pytest.mark.parametrize("method,sparsity", [("dense", 0.0), ("gmp", 0.8), ("l2", 0.8), ("mgpp", 0.9), ("pa", 0.8)])
def test_each_method_end_to_end(tmp_path, method, sparsity):
    loggers = "[jsonl,wandb,tensorboard]" if method == "mgpp" else "[jsonl]"
    proc = run_train(*QUICK, "model=tiny_bert", "task=rte", f"method={method}", f"sparsity={sparsity}",
                     f"logger={loggers}", f"hydra.run.dir={tmp_path}", "resume=false")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_steps"] == 24 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["target_sparsity"] == sparsity
    assert metrics["train_size"] == 256  # the n the prior was scaled by: the subset, with a warning
    warned = "the prior is scaled by 1/n with n=256" in proc.stdout + proc.stderr
    assert warned == (method in ("l2", "mgpp", "pa"))
    assert 0.5 <= metrics["eval_majority_prediction_fraction"] <= 1.0

    # the saved model loads with from_pretrained and carries exactly the target sparsity
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    targets = TargetSelector().select(model)
    assert sum(targets.zeros_per_tensor()) == num_to_prune(sparsity, targets.numel)
    assert metrics["sparsity"] == pytest.approx(sparsity, abs=1 / targets.numel)

    records = read_jsonl(tmp_path / "log.jsonl")
    train_logs = [r for r in records if r["kind"] == "scalars" and "train/loss" in r]
    assert len(train_logs) == 6  # every 4 of 24 steps
    never_pruned = {"pruning/threshold", "pruning/kept_min_magnitude"} if method == "dense" else set()
    for key in ["train/loss", "train/learning_rate", *PRUNING_KEYS]:
        assert (key in train_logs[-1]) == (key not in never_pruned), key  # dense: no threshold logged as 0
    if method in ("gmp", "l2", "mgpp"):  # pruned again after t_f: the previous prune's zeros measured
        assert {"pruning/regrowth_mean", "pruning/regrowth_max"} <= set(train_logs[-1])
    evals = [r for r in records if r["kind"] == "scalars" and "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [12, 24]  # the final evaluation is the in-loop one, not repeated
    assert metrics["eval_accuracy"] == evals[-1]["eval/accuracy"]
    scalar_steps = [r["step"] for r in records if r["kind"] == "scalars" and "train/loss" in r]
    assert len(scalar_steps) == len(set(scalar_steps))
    layer_keys = {k for r in records if r["kind"] == "scalars" for k in r if k.startswith("sparsity_after_prune/")}
    assert len(layer_keys) == (0 if method == "dense" else len(targets))  # per-layer, after each prune
    for name in ("weights/nonzero_targets", "weights/nonzero_log10_magnitude"):
        histograms = [r for r in records if r["kind"] == "histogram" and r["name"] == name]
        assert [h["step"] for h in histograms] == [8, 16, 24, 24]
        assert sum(histograms[-1]["counts"]) == targets.numel - num_to_prune(sparsity, targets.numel)
    tables = [r for r in records if r["kind"] == "table"]
    assert tables and len(tables[-1]["rows"]) == len(targets)
    assert records[-1]["kind"] == "summary" and records[-1]["sparsity"] == metrics["sparsity"]
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "layer_sparsity.csv").is_file()
    assert not (tmp_path / "checkpoints").exists()  # no empty folder left when nothing was saved
    console = proc.stdout + proc.stderr
    assert "step 24/24 | loss " in console and "step 24/24 | eval accuracy " in console and "done: accuracy " in console
    assert "MISSING" not in console and "{'loss'" not in console  # no load report, no raw Trainer dicts
    if method == "mgpp":
        check_dashboards(tmp_path, targets)


@needs_glue
def test_multirun_gives_one_run_dir_and_log_each(tmp_path):
    run_train("-m", *QUICK, "model=tiny_bert", "task=mrpc", "method=gmp,mgpp", "logger=[jsonl]", "save_model=false",
              f"hydra.sweep.dir={tmp_path}")
    logs = sorted(tmp_path.glob("mrpc/*/sparsity0.9_seed42/*/log.jsonl"))
    assert [p.parts[-4] for p in logs] == ["gmp", "mgpp"]
    for log in logs:
        records = read_jsonl(log)
        assert records[-1]["kind"] == "summary" and records[-1]["sparsity"] == pytest.approx(0.9, abs=1e-4)
        assert "eval_f1" in records[-1]


@needs_glue
@pytest.mark.parametrize("sweep", [
    ["model=tiny_bert,tiny_deberta", "trainer.learning_rate=1e-3,5e-4"],
    ["model=tiny_bert", "lam=1e-7,1e-6", "task.max_length=32,64"],  # task.max_length: no schema, no +
])
def test_every_job_of_a_sweep_gets_its_own_folder_config_and_metrics(tmp_path, sweep):
    """Jobs that differ in any key never share a folder: each holds its own config, Hydra record and metrics."""
    short = ["max_train_samples=32", "max_eval_samples=16", "trainer.max_steps=2", "trainer.eval_strategy=no",
             "trainer.disable_tqdm=true", "save_model=false", "logger=[jsonl]"]
    run_train("-m", *short, "task=rte", "method=gmp", *sweep, f"hydra.sweep.dir={tmp_path}")
    folders = sorted(p.parent for p in tmp_path.glob("rte/gmp/sparsity0.9_seed42/*/metrics.json"))
    swept = [o.split("=")[0] for o in sweep if "," in o]
    assert len(folders) == 4 and len({f.name for f in folders}) == 4
    seen = set()
    for folder in folders:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        values = []
        for key in swept:
            node = config
            for part in key.split("."):
                node = node[part]
            value = node["name"] if key == "model" else node
            values.append(value)
            # the folder's name, its Hydra record and its config agree
            written = next(o.split("=", 1)[1] for o in overrides if o.startswith(key + "="))
            assert f"{key}={written}" in folder.name
            assert str(value) == written or float(value) == float(written)
        seen.add(tuple(values))
        assert json.loads((folder / "metrics.json").read_text())["train_steps"] == 2
    assert len(seen) == 4  # four configurations, one folder each


@pytest.mark.parametrize("override,message", [
    ("task=mnlii", "task/mnlii"),
    ("sparsity=1.5", "sparsity must lie in [0, 1), got sparsity=1.5"),
    ("trainer.lerning_rate=1e-4", "trainer.lerning_rate"),
])
def test_bad_overrides_exit_nonzero_naming_the_problem(tmp_path, override, message):
    proc = run_train("model=tiny_bert", override, f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


@needs_glue
def test_local_glue_files_read_as_documented():
    """Row counts of ../shared/data/README (quoting off, CoLA headerless, MRPC with BOM)."""
    counts = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "rte": (2490, 277),
              "stsb": (5749, 1500), "wnli": (635, 71)}
    for task, (n_train, n_dev) in counts.items():
        data = load_glue(task)
        assert (len(data["train"]), len(data["validation"])) == (n_train, n_dev), task
    mrpc = load_glue("mrpc")["validation"]
    assert set(mrpc["label"]) == {0, 1} and mrpc.column_names == ["sentence1", "sentence2", "label"]
    rte = load_glue("rte")["train"]
    assert sorted(set(rte["label"])) == [0, 1]  # entailment=0, not_entailment=1 as on the hub
    stsb = load_glue("stsb")["validation"]
    assert isinstance(stsb["label"][0], float) and 0.0 <= min(stsb["label"]) and max(stsb["label"]) <= 5.0


@needs_glue
def test_rerun_skips_a_finished_run_and_refuses_a_changed_config(tmp_path):
    args = [*QUICK, "model=tiny_bert", "task=rte", "logger=[jsonl]", "save_model=false", f"hydra.run.dir={tmp_path}"]
    run_train(*args)
    finished = (tmp_path / "metrics.json").read_text()
    proc = run_train(*args)
    assert "is finished" in proc.stdout + proc.stderr and (tmp_path / "metrics.json").read_text() == finished
    proc = run_train(*args, "sparsity=0.5", check=False)
    assert proc.returncode != 0 and "configured differently (schedule.final_sparsity, sparsity)" in proc.stderr
    run_train(*args, "sparsity=0.5", "resume=false")  # starts afresh
    assert json.loads((tmp_path / "metrics.json").read_text())["target_sparsity"] == 0.5


@needs_glue
def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    args = [*QUICK, "model=tiny_bert", "task=rte", "method=mgpp", "logger=[jsonl]", "save_model=false",
            "trainer.save_strategy=steps", "trainer.save_steps=12", "trainer.save_total_limit=3",
            f"hydra.run.dir={tmp_path}"]
    run_train(*args)
    # simulate a run killed between the checkpoints of steps 12 and 24
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-24")
    (tmp_path / "metrics.json").unlink()
    proc = run_train(*args)
    assert "resuming from" in proc.stdout + proc.stderr and "checkpoint-12" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_steps"] == 24 and metrics["sparsity"] == pytest.approx(0.9, abs=1e-4)
    steps = [r["step"] for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "scalars" and "train/loss" in r]
    assert steps.count(16) == 2 and steps[-1] == 24  # the log continues: steps 16-24 again after the resume


def test_a_run_killed_after_its_last_checkpoint_finishes_without_training_again(tmp_path):
    """Every step done and checkpointed, metrics.json not yet written (a kill while model/ was saved): the
    rerun writes the run's files from the last checkpoint, with the uninterrupted run's results."""
    from safetensors.torch import load_file

    args = [*QUICK, "model=tiny_bert", "task=rte", "method=mgpp", "logger=[jsonl]", "trainer.save_strategy=steps",
            "trainer.save_steps=12", f"hydra.run.dir={tmp_path}"]
    run_train(*args)
    finished = json.loads((tmp_path / "metrics.json").read_text())
    weights = load_file(tmp_path / "model" / "model.safetensors")
    (tmp_path / "metrics.json").unlink()
    proc = run_train(*args)
    assert "checkpoint-24 holds the run's last step: finishing the run from it, without training" in proc.stdout + proc.stderr
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["train_steps"] == 24
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == {k: v for k, v in finished.items() if k != "wall_time_s"}
    rewritten = load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(weights[name], rewritten[name]) for name in weights)


DASHBOARD_KEYS = {"train/loss", "train/learning_rate", "eval/accuracy", "pruning/zero_fraction_now", "pruning/target_sparsity",
                  "pruning/kept_min_magnitude", "pruning/prior_penalty", "pruning/regrowth_mean"}


def check_dashboards(run_dir, targets):
    """What a W&B workspace and TensorBoard need: named, grouped, tagged runs; prefixed keys; per-layer
    sparsity as scalars; histograms; the HParams with the final metric."""
    import wandb_offline
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_file = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    wandb_run = wandb_offline.summary(run_file)
    assert wandb_run["name"] == "tiny_bert-rte-mgpp-sparsity0.9-seed42" and wandb_run["group"] == "rte-mgpp"
    assert wandb_run["job_type"] == "mgpp"
    assert {"mgpp", "rte", "tiny_bert", "sparsity=0.9", "seed=42"} <= set(wandb_run["tags"])
    layer_keys = {f"sparsity_after_prune/{name}" for name in targets.names}
    assert DASHBOARD_KEYS | layer_keys <= wandb_run["keys"]
    assert {"weights/nonzero_targets/values", "weights/nonzero_log10_magnitude/values"} <= wandb_run["keys"]
    assert not {"loss", "eval_accuracy"} & wandb_run["keys"]  # no flat Trainer keys

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()

    # per-layer sparsity right after each prune, in both backends: weighted by size, the schedule's
    # target (logging every 4 steps, pruning every 10 from t_i=2, then every step from t_f=17)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    from mgpp.schedules import CubicSparsity

    schedule = CubicSparsity(config["sparsity"], t_i=config["t_i"], t_f=config["t_f"],
                             prune_every=config["prune_every"]).bind(24)
    sizes = {name: p.numel() for name, p in zip(targets.names, targets.params)}
    wandb_layers = {step: {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("sparsity_after_prune/")}
                    for step, row in wandb_offline.history(run_file).items()}
    wandb_layers = {step: layers for step, layers in wandb_layers.items() if layers}
    tb_layers: dict[int, dict] = {}
    for name in sizes:
        for event in events.Scalars(f"sparsity_after_prune/{name}"):
            tb_layers.setdefault(event.step, {})[name] = event.value
    assert sorted(wandb_layers) == sorted(tb_layers) and 2 in wandb_layers and 12 in wandb_layers
    assert [t for t in range(1, 25) if schedule.prunes_at(t) and t < 17] == [2, 12]  # not logging steps
    for step, layers in tb_layers.items():
        assert schedule.prunes_at(step) and set(layers) == set(sizes)
        for per_layer in (layers, wandb_layers[step]):
            pruned = sum(per_layer[n] * sizes[n] for n in sizes)
            assert pruned == pytest.approx(schedule.sparsity(step) * sum(sizes.values()), rel=1e-5, abs=len(sizes))
    assert DASHBOARD_KEYS | layer_keys <= set(tags["scalars"])
    assert set(tags["histograms"]) == {"weights/nonzero_targets", "weights/nonzero_log10_magnitude"}
    assert not any(tag.startswith("hparam") for tag in tags["scalars"])  # one name per metric: eval/accuracy
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    columns = [m.name.tag for m in experiment.metric_infos]
    assert "eval/accuracy" in columns and all(c.startswith("eval/") for c in columns) and "eval/runtime" not in columns


@needs_glue
@pytest.mark.parametrize("method,resume_from", [("mgpp", 8), ("pa", 8), ("pa", 16)])
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, method, resume_from):
    """A run 'killed' after the checkpoint of step ``resume_from`` (MGPP mid-schedule; PA while
    annealing, and in its fixed-mask phase after t_f=12) and resumed ends with exactly the weights of
    the uninterrupted run."""
    import shutil

    from safetensors.torch import load_file

    args = [*QUICK, "model=tiny_bert", "task=rte", f"method={method}", "sparsity=0.8", "t_i=4", "t_f=12",
            "prune_every=2", "logger=[jsonl]", "trainer.save_strategy=steps", "trainer.save_steps=8",
            "trainer.save_total_limit=5", "trainer.eval_strategy=no", f"hydra.run.dir={tmp_path}"]
    run_train(*args)
    uninterrupted = load_file(tmp_path / "model" / "model.safetensors")
    for later in (s for s in (8, 16, 24) if s > resume_from):  # what the kill lost
        shutil.rmtree(tmp_path / "checkpoints" / f"checkpoint-{later}")
    shutil.rmtree(tmp_path / "model")
    (tmp_path / "metrics.json").unlink()
    proc = run_train(*args)
    assert f"checkpoint-{resume_from}" in proc.stdout + proc.stderr
    resumed = load_file(tmp_path / "model" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
