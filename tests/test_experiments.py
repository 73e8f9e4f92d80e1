"""Every experiment file (experiments/) and sweep file (sweeps/) composes, for every task and
method it sweeps; the launcher configs name real plugins; the paper blocks are well formed."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

import mgpp.config  # noqa: F401  registers the schema and the offline_model resolver
from mgpp.config import build, validate
from mgpp.methods import build_method
from mgpp.report.tables import paper_cells

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


def compose_train(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["output_dir=/tmp/unused", *overrides], return_hydra_config=hydra)


def swept(cfg, key):
    """The comma-separated values a sweep file gives ``key`` (None when not swept)."""
    value = cfg.hydra.sweeper.get("params", {}).get(key)
    return [v.strip() for v in str(value).split(",")] if value is not None else None


def test_the_files_are_where_the_readme_says():
    assert {"study_minilm", "table1_deberta_glue", "table2_bert_glue", "table3_deberta_squad",
            "table4_bart_summarization", "table5_bert_upstream", "table5_sparse_transfer",
            "table6_ablation"} <= set(EXPERIMENTS)
    assert {"ablation_grid", "optuna", "sensitivity_lam", "sensitivity_sigma0_sq", "sensitivity_sigma1_sq"} <= set(SWEEPS)
    for folder in ("experiments", "sweeps"):
        for path in (ROOT / folder).glob("*.yaml"):
            assert path.read_text().splitlines()[0] == "# @package _global_", path


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_for_every_swept_task_and_method(name):
    base = compose_train(f"experiment={name}", hydra=True)
    assert base.hydra.sweep.dir and "${now:" not in OmegaConf.to_yaml(base.hydra.sweep, resolve=False)  # resumable
    tasks = swept(base, "task") or [base.task.name]
    methods = swept(base, "method") or [None]
    for task in tasks:
        for method in methods:
            cfg = compose_train(f"experiment={name}", f"task={task}", *([f"method={method}"] if method else []))
            OmegaConf.to_container(cfg, resolve=True)  # every recipe interpolation resolves
            validate(cfg)
            built = build_method(cfg)
            assert built.schedule.final_sparsity == (0.0 if cfg.method.name == "dense" else cfg.sparsity)
            assert build(cfg.task).name == task
    for sparsity in swept(base, "sparsity") or []:
        assert 0 < float(sparsity) < 1


PAPER_TEXT = ROOT.parent / "shared" / "paper" / "mgpp-paper.txt"
PAPER_TABLES = ["table1_deberta_glue", "table3_deberta_squad", "table4_bart_summarization", "table6_ablation"]


def task_metric_count(task: str) -> int:
    """Numbers per cell for a task: its metrics, times its eval splits (MNLI: matched, mismatched)."""
    cfg = compose_train(f"task={task}")
    return len(cfg.task.metrics) * max(len(cfg.task.get("eval_splits") or []), 1)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_paper_block_is_what_the_report_reads(name):
    cfg = compose_train(f"experiment={name}")
    if cfg.paper is None:
        assert name.startswith("study_")  # ours, not a paper table
        return
    assert cfg.paper.table.startswith("Table") and "mgpp-paper.txt line" in cfg.paper.source
    first, last = cfg.paper.lines
    assert 1 <= first <= last
    results = cfg.paper.results or {}
    assert bool(results) == (name in PAPER_TABLES), "Tables 2 and 5 have no legible body; the others do"
    if not results:
        assert "not legible" in cfg.paper.note or "did not survive" in cfg.paper.note
    cells = paper_cells(name, OmegaConf.to_container(cfg.paper))
    for cell in cells:
        n = task_metric_count(cell.task)  # one number per metric the task reports, in its order
        assert len(cell.values) == n == len(cell.labels), (cell.task, cell.method, cell.sparsity)
        assert cell.sparsity == 0 or 0.5 <= cell.sparsity < 1
        assert all(v is None or 0 < v <= 100 for v in cell.values)
    assert all(c.sparsity == 0 for c in cells if c.method in ("dense", "lead3"))


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason="the paper's text (shared/paper) is not beside the checkout")
@pytest.mark.parametrize("name", PAPER_TABLES)
def test_every_paper_cell_is_in_the_lines_it_cites(name):
    """Each cell, written as the paper writes it (``85.2/84.2``), occurs in the cited lines; and the
    numbers of one method at one sparsity occur on one line, in our order (the table's column order)."""
    cfg = compose_train(f"experiment={name}")
    first, last = cfg.paper.lines
    lines = PAPER_TEXT.read_text(encoding="utf-8").splitlines()[first - 1:last]
    clean = [ln.replace("$", "").replace(" / ", "/") for ln in lines]
    text = "\n".join(clean)
    digits = cfg.paper.get("digits", 1)
    cells = paper_cells(name, OmegaConf.to_container(cfg.paper))
    for cell in cells:
        written = "/".join("N.A." if v is None else f"{v:.{digits}f}" for v in cell.values)
        if "N.A." not in written:
            assert written in text, (cell.task, cell.method, cell.sparsity, written)
    # spot checks of row layout: a whole row of Table 1 and Table 6 in column order
    if name == "table1_deberta_glue":
        row = [c for c in cells if c.method == "mgpp" and c.sparsity == 0.9]
        order = ["mnli", "rte", "qnli", "mrpc", "qqp", "sst2", "cola", "stsb"]
        written = " ".join("/".join(f"{v:.1f}" for v in next(c for c in row if c.task == t).values) for t in order)
        assert any(" ".join(ln.split()[1:]) == written for ln in clean)  # "MGPP 85.2/84.2 66.2 ... 87.2/86.7"
    if name == "table6_ablation":
        assert any(" ".join(ln.split()) == "MGPP 85.2/84.2 82.6/87.1 90.2" for ln in clean)
        assert any(" ".join(ln.split()) == "PA 79.5/78.9 77.6/83.8 87.2" for ln in clean)


def test_headline_number_is_in_table1():
    cfg = compose_train("experiment=table1_deberta_glue")
    assert list(cfg.paper.results.mnli.mgpp["0.9"]) == [85.2, 84.2]
    assert list(cfg.paper.results.mnli.mvp["0.9"]) == ["N.A.", "N.A."]  # non-convergence, never a number


def test_report_prints_the_paper_beside_ours_from_an_experiment_file(tmp_path, capsys):
    from mgpp.report.__main__ import main as report_main

    assert report_main(["table6_ablation", str(ROOT / "experiments" / "table1_deberta_glue.yaml"), "--no-figures",
                        "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| 90% | pa (paper) | 79.5/78.9 | 77.6/83.8 | 87.2 | |" in printed
    assert "| 90% | losparse (paper) | 81.7/81.8 | 66.0 |" in printed and "| 90% | mvp (paper) | N.A./N.A. |" in printed


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_composes_and_sweeps_something(name):
    cfg = compose_train(f"sweep={name}", "task=mrpc", hydra=True)
    if name != "study_ablation_followup":  # that one names folders; run.sh lists its points (test below)
        assert cfg.hydra.sweeper.params
    assert "${now:" not in OmegaConf.to_yaml(cfg.hydra.sweep, resolve=False)  # fixed dir: reruns resume
    get_class(cfg.hydra.sweeper._target_)
    validate(cfg)
    build_method(cfg)


def test_sweep_on_top_of_an_experiment_keeps_the_experiments_recipe():
    cfg = compose_train("experiment=table2_bert_glue", "sweep=ablation_grid", "task=rte", hydra=True)
    assert swept(cfg, "method") == ["dense", "gmp", "l2", "pa", "mgpp"]
    assert cfg.model.name == "bert_base" and cfg.trainer.learning_rate == cfg.recipe.rte.learning_rate


def test_optuna_sweep_maximises_the_dev_metric():
    cfg = compose_train("sweep=optuna", "task=mrpc", hydra=True)
    assert cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"sigma0_sq", "sigma1_sq", "trainer.learning_rate"}


@pytest.mark.parametrize("launcher,target", [
    ("local_parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("slurm_multi", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launchers_are_selectable(launcher, target):
    cfg = compose_train(f"hydra/launcher={launcher}", hydra=True)
    assert cfg.hydra.launcher._target_ == target
    get_class(target)
    if launcher.startswith("slurm"):
        assert cfg.hydra.launcher.max_num_timeout > 0  # requeued after a timeout or preemption
    if launcher == "slurm_multi":  # one multi-process job per run: a process per GPU
        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 8


def test_a_multi_process_slurm_job_gets_the_torch_distributed_environment(monkeypatch):
    from mgpp.distributed import export_slurm_env, first_host

    assert first_host("gpu[003-005,007],cpu01") == "gpu003" and first_host("node7,node8") == "node7"
    assert first_host("n[1-2]-ib") == "n1-ib" and first_host("x,gpu[1-2]") == "x"
    exported = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    for key in exported:  # recorded by monkeypatch, so that the test leaves the environment as it found it
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not export_slurm_env()  # python run once in an sbatch -n 8 allocation: one process, left alone
    for key, value in {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
                       "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "gpu[010-011]",
                       "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_JOB_ID": "4242"}.items():
        monkeypatch.setenv(key, value)
    assert export_slurm_env()
    assert {k: os.environ[k] for k in exported} == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1",
                                                    "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu010",
                                                    "MASTER_PORT": str(15000 + 4242)}
    assert not export_slurm_env()  # a launcher's (or our own) RANK wins


def test_recipes_and_experiment_values_win_over_the_defaults():
    """The shared recipe and the experiment files set the top-level knobs; train.yaml's defaults do not
    override them (the recipe group comes after _self_)."""
    sst2 = compose_train("experiment=table1_deberta_glue", "task=sst2")
    built = build_method(sst2)
    assert (built.prior.sigma0_sq, built.prior.sigma1_sq, built.prior.lam) == (1e-9, 0.1, 1e-7)
    assert (built.schedule.t_i, built.schedule.t_f, built.schedule.prune_every) == (1000, -5000, 10)
    assert sst2.trainer.adam_beta2 == 0.98 and sst2.trainer.max_grad_norm == 0.0 and sst2.task.max_length == 512
    squad = build_method(compose_train("experiment=table3_deberta_squad"))
    assert (squad.schedule.t_i, squad.schedule.t_f) == (5400, -27000)
    study = build_method(compose_train("experiment=study_ablation", "task=sst2", "method=pa"))
    assert (study.schedule.t_i, study.schedule.t_f, study.schedule.sigma0_sq_final) == (0.08, 0.6, 1e-6)


def test_optuna_sweep_resumes_from_its_sqlite_study(tmp_path):
    """Two trials, then the same command asking for three runs only the missing one."""
    import optuna
    from test_train import QUICK, needs_glue, run_train  # noqa: F401

    from mgpp.tasks.glue_data import find_glue_dir

    if find_glue_dir() is None:
        pytest.skip("no local GLUE folder")
    sweep = tmp_path / "sweep"
    common = ["-m", "sweep=optuna", *QUICK, "trainer.max_steps=8", "trainer.eval_steps=8", "model=tiny_bert",
              "task=rte", "logger=[jsonl]", "save_model=false", f"hydra.sweep.dir={sweep}"]
    first = run_train(*common, "hydra.sweeper.n_trials=2")
    assert "A new study created" not in first.stdout + first.stderr  # Optuna's setup chatter stays quiet
    second = run_train(*common, "hydra.sweeper.n_trials=3")
    assert "2 of 3 trials finished" in second.stdout + second.stderr
    study = optuna.load_study(study_name="mgpp_rte_sparsity0.9", storage=f"sqlite:///{sweep}/optuna.db")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3
    assert len(list(sweep.rglob("metrics.json"))) == 3


def test_study_queue_runs_every_point_once_in_priority_order():
    """The whole queue: the first seed's required blocks, then the follow-up; for the later seeds the
    90% cells before anything else, the weak-slab point beside every seed the follow-up did not run,
    nothing twice; also when resuming from a later seed."""
    import subprocess

    script = str(ROOT / "experiments/results/study_ablation/run.sh")
    for seeds in ("1 2 3", " 2  3", "1"):
        env = dict(os.environ, DRY_RUN="1", SEEDS=seeds)
        env.pop("BLOCKS", None)
        lines = subprocess.run(["bash", script], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
        assert len(lines) == len(set(lines))
        slab = [line for line in lines if "sigma1_sq=1.0 method=" in line and "sigma0_sq" not in line]
        later = [s for s in seeds.split() if s != "1"]  # the follow-up itself ran seed 1
        assert sorted(line.rsplit("seed=", 1)[1] for line in slab) == sorted(["1", "1", *later, *later])  # L2, MGPP
        first = seeds.split()[0]
        follow_up = lines.index("task=mrpc sparsity=0.9 sweep=study_ablation_followup sigma0_sq=1e-8 method=mgpp seed=1")
        assert lines[follow_up - 1].endswith(f"seed={first}") and "followup" not in lines[0]
        headline = [i for i, line in enumerate(lines) if line.startswith(("task=mrpc sparsity=0.9 method=",
                                                                           "task=sst2 sparsity=0.9 method="))]
        assert len(headline) == 8 * len(seeds.split())
        later_rest = [i for i, line in enumerate(lines) if not line.endswith(f"seed={first}")
                      and ("sparsity=0.8" in line or "sigma1_sq=1.0" in line and not line.endswith("seed=1"))]
        assert max(headline) < min(later_rest, default=len(lines))


def test_study_report_only_trains_nothing_and_writes_every_reading_table(tmp_path):
    """REPORT_ONLY=1 (make study-report): no run starts; the study's report, the follow-up's, and the
    follow-up's three table-only comparisons (L2 - GMP, each prior's two slabs) are made, each
    into its own folder, every pin a --by key of the call."""
    import shlex
    import subprocess

    calls = tmp_path / "calls.txt"
    fake_python = tmp_path / "python"  # records its arguments instead of running anything
    fake_python.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {calls}\necho >> {calls}\n')
    fake_python.chmod(0o755)
    env = dict(os.environ, REPORT_ONLY="1", PY=str(fake_python))
    subprocess.run(["bash", str(ROOT / "experiments/results/study_ablation/run.sh")], env=env, check=True,
                   capture_output=True)
    invocations = [shlex.split(line) for line in calls.read_text().splitlines()]
    assert all(args[:2] == ["-m", "mgpp.report"] for args in invocations)
    outs = [args[args.index("--out") + 1].removeprefix("experiments/results/study_ablation") for args in invocations]
    confirm = ["/confirm"] if (ROOT / "experiments/results/study_ablation/confirm").is_dir() else []
    assert outs == ["", "/followup", "/followup/comparisons/l2_vs_gmp", "/followup/comparisons/mgpp_by_slab",
                    "/followup/comparisons/l2_by_slab", *confirm]
    from mgpp.report.__main__ import parse_args
    for args in invocations[2:5]:  # the follow-up's table-only comparisons: their pins parse against the --by keys
        parsed = parse_args(args[2:])
        assert parsed.no_figures and parsed.compare


def test_study_followup_points_compose_into_their_own_folders():
    """run.sh's follow-up block: each point composes on top of the study, with its prior knobs set,
    in a folder of its own outside the study's grid (so the grid's finished runs still match); its
    weak-slab block (the later seeds) runs two of the same points."""
    import subprocess

    def queue(block):
        env = dict(os.environ, DRY_RUN="1", BLOCKS=block, SEEDS="1")
        return subprocess.run(["bash", str(ROOT / "experiments/results/study_ablation/run.sh")], env=env,
                              capture_output=True, text=True, check=True).stdout.splitlines()

    lines, slab = queue("followup"), queue("followup_slab")
    assert len(lines) == 5 and len(slab) == 2 and set(slab) <= set(lines)
    folders = set()
    for line in lines:
        overrides = line.split()
        cfg = compose_train("experiment=study_ablation", *overrides, hydra=True)
        validate(cfg)
        knobs = dict(o.split("=", 1) for o in overrides)
        for key in ("sigma0_sq", "sigma1_sq"):
            expected = float(knobs.get(key, cfg.recipe.mrpc[key]))
            assert cfg[key] == pytest.approx(expected)
        prior = build_method(cfg).prior  # L2's variance is the slab's; MGPP's mixture has both
        assert getattr(prior, "sigma_sq", getattr(prior, "sigma1_sq", None)) == pytest.approx(cfg.sigma1_sq)
        assert getattr(prior, "sigma0_sq", cfg.sigma0_sq) == pytest.approx(cfg.sigma0_sq)
        run_dir = cfg.hydra.run.dir
        for key in ("task.name", "method.name", "sparsity", "seed", "sigma0_sq", "sigma1_sq"):
            run_dir = run_dir.replace("${" + key + "}", str(OmegaConf.select(cfg, key)))
        assert run_dir.startswith("experiments/results/study_ablation/followup/mrpc/") and "$" not in run_dir
        folders.add(run_dir)
    assert len(folders) == 5
    study = compose_train("experiment=study_ablation", "task=mrpc", hydra=True)
    assert study.hydra.run.dir.startswith("experiments/results/study_ablation/runs/")


def test_study_confirmatory_pa_runs_the_setting_the_search_chose():
    """run.sh's confirm_pa block: PA with the (final sigma0^2, lr) that sweeps/pa_search picked by the study
    README's rule (highest seed-1 dev accuracy after the last step), trained exactly as that search run was,
    each seed in its own folder under confirm/ with MRPC's test set evaluated."""
    import json
    import subprocess

    env = dict(os.environ, DRY_RUN="1", BLOCKS="confirm_pa", SEEDS="11 12")
    lines = subprocess.run(["bash", str(ROOT / "experiments/results/study_ablation/run.sh")], env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(lines) == 2 and all("method=pa" in line for line in lines)
    search = ROOT / "experiments/results/study_ablation/search/pa/mrpc/sparsity0.9_seed1"
    finished = {run.parent.parent.name: json.loads(run.read_text()) for run in search.glob("*/method=pa/metrics.json")}
    if len(finished) == 9:  # the rule, recomputed from the search's runs (ties: F1, then the larger final sigma0^2)
        best = max(finished, key=lambda k: (finished[k]["eval_accuracy"], finished[k]["eval_f1"],
                                            float(k.split("_lr")[0].removeprefix("sigma0_sq_final"))))
        assert best == "sigma0_sq_final1e-07_lr5e-05"
    chosen = OmegaConf.load(search / "sigma0_sq_final1e-07_lr5e-05/method=pa/config.yaml")
    folders = set()
    for line in lines:
        cfg = compose_train("experiment=study_ablation", *line.split(), hydra=True)
        validate(cfg)
        assert list(cfg.task.eval_splits) == ["validation", "test"]
        assert cfg.hydra.run.dir.startswith("experiments/results/study_ablation/confirm/mrpc/pa/")
        folders.add(cfg.hydra.run.dir)
        for group in ("trainer", "schedule", "prior", "pruning"):
            assert OmegaConf.to_container(cfg[group], resolve=True) == OmegaConf.to_container(chosen[group], resolve=True), group
    assert len(folders) == 2


def test_study_confirmatory_block_runs_apart_with_its_verdict_split():
    """run.sh's confirmatory blocks (fixed in the study README before they ran): each run composes into
    its own folder under confirm/, evaluates dev and MRPC's labelled test set, and keeps the study's
    recipe; the standard-recipe dense run trains as the dense search's chosen run did (lr 1e-4)."""
    import subprocess

    env = dict(os.environ, DRY_RUN="1", BLOCKS="confirm confirm_dense", SEEDS="11 12")
    lines = subprocess.run(["bash", str(ROOT / "experiments/results/study_ablation/run.sh")], env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(lines) == 10 and lines[0].endswith("seed=11") and lines[-1].endswith("seed=12")  # seed by seed
    study = compose_train("experiment=study_ablation", "task=mrpc")
    folders = set()
    for line in lines:
        cfg = compose_train("experiment=study_ablation", *line.split(), hydra=True)
        validate(cfg)
        assert list(cfg.task.eval_splits) == ["validation", "test"] and build(cfg.task).name == "mrpc"
        assert cfg.hydra.run.dir.startswith("experiments/results/study_ablation/confirm/mrpc/")
        folders.add(cfg.hydra.run.dir)
        if "recipe=glue_standard" not in line:  # the study's recipe, untouched
            assert OmegaConf.to_container(cfg.trainer, resolve=True) == OmegaConf.to_container(study.trainer, resolve=True)
    assert len(folders) == 10
    standard = compose_train("experiment=study_ablation", "sweep=study_confirm", "task=mrpc", "method=dense",
                             "sparsity=0.0", "recipe=glue_standard")
    searched = OmegaConf.load(next((ROOT / "experiments/results/study_ablation/search/dense/mrpc/seed1/lr0.0001")
                                   .glob("*/config.yaml")))
    same = ("learning_rate", "per_device_train_batch_size", "num_train_epochs", "warmup_steps", "weight_decay",
            "lr_scheduler_type", "lr_scheduler_kwargs", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm")
    for key in same:
        assert OmegaConf.select(standard, f"trainer.{key}") == OmegaConf.select(searched, f"trainer.{key}"), key
