"""``python -m mgpp.train`` as a person meets it: errors as one line naming the key (no traceback unless
HYDRA_FULL_ERROR=1), ``--cfg job`` short and checked, optional parts checked before anything loads,
no folder left by a refused start, and a console line per logging step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import train_in_process

from mgpp.command_line import UsageError, check_override_keys, check_plugins, check_requirements, overrides_of
from mgpp.console import final_line, step_line

ROOT = Path(__file__).resolve().parents[1]


def mgpp_train(*args, env=None):
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "WANDB_MODE": "offline",
           "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mgpp.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def run_main(capsys, *argv):
    """``python -m mgpp.train <argv>`` in this process, for what it decides before Hydra runs a job:
    (exit status, stdout, stderr)."""
    from mgpp.train import main

    try:
        main(list(argv))
        status = 0
    except SystemExit as done:
        status = done.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("override,message", [
    ("sparsty=0.8", "unknown config key 'sparsty' (did you mean sparsity?)"),
    ("+sparsty=0.8", "unknown config key 'sparsty' (did you mean sparsity?)"),
    ("trainer.lerning_rate=1e-4", "unknown config key 'trainer.lerning_rate' (did you mean trainer.learning_rate?)"),
])
def test_a_misspelt_key_gets_the_nearest_one_and_no_traceback(capsys, override, message):
    status, out, err = run_main(capsys, "model=tiny_bert", override)
    assert status != 0 and message in err and "Traceback" not in out + err


def test_config_job_prints_what_was_set_and_checks_it(capsys):
    status, out, err = run_main(capsys, "--cfg", "job")
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) < 130 and "trackio_space_id" not in out and "  learning_rate: 5.0e-05" in lines
    status, out, _ = run_main(capsys, "--cfg", "job", "--all")
    assert status == 0 and "trackio_space_id" in out and len(out.splitlines()) > 150
    status, _, err = run_main(capsys, "--cfg", "job", "experiment=table6_ablation", "task=mrpc")
    assert status == 0, err  # a GPU recipe (bf16) composes and checks on a CPU: bf16 is the run's machine's to check
    _, out, _ = run_main(capsys, "--cfg", "job", "experiment=study_ablation", "task=mrpc")
    assert "  train_sampling_strategy: group_by_length" in out.splitlines()  # set in conf/: shown
    for key, nearest in (("+prior.lamm=1", "prior.lam"), ("+task.max_lenght=64", "task.max_length")):
        status, _, err = run_main(capsys, "--cfg", "job", key)  # a _target_ node's key: its class's arguments
        assert status != 0 and f"(did you mean {nearest}?)" in err, err
    status, _, err = run_main(capsys, "--cfg", "job", "+logger.wandb.projet=x")
    assert status != 0 and "unknown config key 'logger.wandb.projet' (did you mean logger.wandb.project?)" in err
    _, out, _ = run_main(capsys, "--cfg", "job", "trainer.push_to_hub=true")  # set on the command line: shown
    assert "  push_to_hub: true" in out.splitlines()
    for bad, message in [("sparsity=1.5", "sparsity must lie in [0, 1), got sparsity=1.5"),
                         ("trainer.gradient_accumulation_steps=0", "trainer.gradient_accumulation_steps"),
                         ("lam=2", "lam")]:
        status, _, err = run_main(capsys, "--cfg", "job", bad)
        assert status != 0 and message in err and "Traceback" not in err, (bad, err[-2000:])


def test_a_refused_run_prints_one_line_and_leaves_no_folder(tmp_path):
    folder = tmp_path / "run"
    proc = mgpp_train("model=tiny_bert", "sparsity=1.5", f"hydra.run.dir={folder}")
    assert proc.returncode != 0 and "mgpp: error: sparsity must lie in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr and not folder.exists()
    full = mgpp_train("model=tiny_bert", "sparsity=1.5", f"hydra.run.dir={folder}", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_a_folder_in_use_is_refused_in_one_line(tmp_path):
    """A second run into a live run's folder is refused before it touches anything there, resume=false
    included: the live run's checkpoints are not moved aside, its config not rewritten."""
    import os
    import socket

    from mgpp.run_folder import RunFolder

    folder = tmp_path / "run"
    (folder / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (folder / "config.yaml").write_text("the live run's\n")
    live = RunFolder(folder)
    live.acquire()  # this process is the live run
    try:
        for extra in ([], ["resume=false"]):
            proc = mgpp_train("model=tiny_bert", "task=rte", "logger=[jsonl]", f"hydra.run.dir={folder}", *extra)
            assert proc.returncode != 0 and "Traceback" not in proc.stderr
            assert f"is in use by another run (pid {os.getpid()} on {socket.gethostname()})" in proc.stderr
            assert (folder / "checkpoints" / "checkpoint-5").is_dir() and not (folder / "checkpoints.old-1").exists()
            assert (folder / "config.yaml").read_text() == "the live run's\n"
            assert (folder / "run.lock").exists()
            assert sorted(p.name for p in folder.iterdir()) == [".run.lock", "checkpoints", "config.yaml", "run.lock"]
        # a job whose folder Hydra did not name (a sweep job's, output_dir=): train() takes the lock before it
        # moves anything, so resume=false still moves nothing
        proc = train_in_process("model=tiny_bert", "task=rte", "logger=[jsonl]", f"hydra.run.dir={tmp_path / 'hydra'}",
                                f"output_dir={folder}", "resume=false")
        assert proc.returncode != 0 and "is in use by another run" in proc.stderr + proc.stdout
        assert (folder / "checkpoints" / "checkpoint-5").is_dir() and not (folder / "checkpoints.old-1").exists()
        assert (folder / "config.yaml").read_text() == "the live run's\n"
    finally:
        live.release()


def test_optional_parts_are_checked_before_anything_loads(monkeypatch):
    import mgpp.command_line as command_line

    monkeypatch.setattr(command_line, "_installed", lambda module: False)
    with pytest.raises(UsageError, match=r"pip install 'mgpp\[tensorboard\]'"):
        check_requirements("mgpp.loggers.TensorBoardLogger", "logger.tensorboard")
    check_requirements("mgpp.loggers.JSONLLogger", "logger.jsonl")  # needs nothing
    with pytest.raises(UsageError, match=r"hydra_optuna_sweeper: pip install 'mgpp\[sweeps\]'"):
        check_plugins(["sweep=optuna", "task=mrpc"])
    with pytest.raises(UsageError, match=r"hydra_joblib_launcher: pip install 'mgpp\[sweeps\]'"):
        check_plugins(["hydra/launcher=local_parallel"])
    with pytest.raises(UsageError, match=r"hydra_submitit_launcher"):
        check_plugins(["hydra/launcher=slurm"])
    with pytest.raises(UsageError, match=r"hydra_submitit_launcher"):
        check_plugins(["hydra/launcher=slurm_multi"])  # builds on slurm: followed
    check_plugins(["sweep=ablation_grid", "task=mrpc"])  # the basic sweeper: no plugin


def test_prepare_refuses_a_missing_logger_extra_by_name(monkeypatch):
    """What train() runs before the run folder, the model or the data: a missing extra fails there."""
    from hydra import compose, initialize_config_dir

    import mgpp.command_line as command_line
    from mgpp.config import config_dir
    from mgpp.train import prepare

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny_bert", "logger=[jsonl,tensorboard]", "output_dir=/nonexistent"])
    monkeypatch.setattr(command_line, "_installed", lambda module: module != "tensorboard")
    with pytest.raises(UsageError, match=r"logger.tensorboard needs the package tensorboard"):
        prepare(cfg)


def test_override_keys_of_untyped_nodes_and_groups_pass_to_hydra():
    check_override_keys(["model=tiny_bert", "task.max_length=64", "+prior.extra=1", "hydra.run.dir=x",
                         "hydra/launcher=basic", "logger.wandb.project=p", "~logger.wandb", "trainer.push_to_hub=true"])
    assert overrides_of(["-m", "--cfg", "job", "-cn", "train", "a=1", "--resolve", "b=2"]) == ["a=1", "b=2"]
    assert overrides_of(["-sc", "install=bash"]) == []  # shell completion's argument is not an override


def test_a_sweep_folder_name_leaves_out_what_changes_no_result():
    from mgpp.config import job_dirname

    assert job_dirname(["logger.wandb.project=x", "logger=[jsonl]", "resume=false", "lam=1e-6", "task=rte"],
                       ["task"]) == "/lam=1e-6"
    assert job_dirname(["data_dir=/a/b"]) == "/data_dir=_a_b" and job_dirname([]) == ""
    assert job_dirname(["task=rte", "task.max_length=64"], ["task"]) == "/task.max_length=64"  # named: exactly
    long = job_dirname([f"k{i}=" + "v" * 30 for i in range(10)])
    assert len(long) <= 201 and long != job_dirname([f"k{i}=" + "v" * 30 for i in range(9)])


class _Schedule:
    def sparsity(self, t):
        return 0.9 if t >= 20 else 0.5


class _Pruning:
    targets, schedule, sparsity_after_prune = [object()], _Schedule(), 0.42


def test_console_lines_say_step_loss_sparsity_and_the_eval_metric():
    pruning = _Pruning()
    pruning.last_prune_step = 12
    line = step_line(15, 120, {"loss": 0.61234, "learning_rate": 4.2e-5, "epoch": 0.5}, pruning, "accuracy")
    assert line == "step  15/120 | loss 0.6123 | lr 4.20e-05 | sparsity 0.420 at step 12 (target 0.500)"
    pruning.last_prune_step = 20
    assert step_line(20, 120, {"loss": 0.5}, pruning).endswith("sparsity 0.420 (target 0.900)")
    pruning.last_prune_step = 0  # no prune yet: no sparsity claimed
    assert "sparsity" not in step_line(5, 120, {"loss": 0.5}, pruning)
    evaluation = {"eval_loss": 0.43, "eval_f1": 0.85, "eval_accuracy": 0.8125, "eval_runtime": 3.2,
                  "eval_majority_prediction_fraction": 0.6}
    assert step_line(40, 120, evaluation, None, "accuracy") == \
        "step  40/120 | eval accuracy 0.8125 | eval f1 0.85 | eval loss 0.43"
    assert step_line(40, 120, {"train_runtime": 3.0}, None) is None


def test_the_last_line_flags_a_collapsed_model():
    good = {"eval_accuracy": 0.81, "eval_majority_prediction_fraction": 0.6, "eval_majority_label_fraction": 0.55,
            "sparsity": 0.9, "target_sparsity": 0.9}
    assert final_line(good, "accuracy", 125) == "done: accuracy 0.81, sparsity 0.9000 (target 0.9), 2 min 5 s"
    one_class = good | {"eval_majority_prediction_fraction": 1.0, "eval_accuracy": 0.55}
    assert "COLLAPSED: 100% of its predictions are one class" in final_line(one_class, "accuracy", 5)
    at_chance = good | {"eval_accuracy": 0.555}
    assert "COLLAPSED: accuracy 0.5550 is the commonest label's share (0.5500)" in final_line(at_chance, "accuracy", 5)
    constant = {"eval_pearson": 0.01, "eval_prediction_std": 0.001}
    assert "COLLAPSED" in final_line(constant, "pearson", 5)


def test_a_parallel_sweep_reports_a_refused_job_in_one_line_and_finishes_the_others(tmp_path):
    """hydra/launcher=local_parallel (joblib workers get the schema pickled: it must import by name);
    a job with a bad value fails in one line and leaves no folder, the other job finishes."""
    import pickle

    from mgpp.config import TrainerConfig

    assert pickle.loads(pickle.dumps(TrainerConfig)) is TrainerConfig
    proc = mgpp_train("-m", "hydra/launcher=local_parallel", "model=tiny_bert", "task=rte", "sparsity=1.5,0.5",
                      "data_dir=/nonexistent,null", "max_train_samples=32", "max_eval_samples=16", "trainer.max_steps=2",
                      "logger=[jsonl]", "save_model=false", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "mgpp: error: sparsity must lie in [0, 1), got sparsity=1.5" in proc.stderr
    finished = list(tmp_path.rglob("metrics.json"))
    assert len(finished) == 1 and "sparsity0.5_seed42" in str(finished[0]) and "data_dir=null" in str(finished[0])
    assert {p.name for p in (tmp_path / "rte" / "mgpp").iterdir()} == {"sparsity0.5_seed42"}  # no stray folders
    assert [p.name for p in (tmp_path / "rte" / "mgpp" / "sparsity0.5_seed42").iterdir()] == [finished[0].parent.name]
