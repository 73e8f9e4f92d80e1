"""Every experiment file (experiments/) and sweep file (sweeps/) composes, for every task and
method it sweeps; the launcher configs name real plugins; the paper blocks are well formed."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

import mgpp.config  # noqa: F401  registers the schema and the offline_model resolver
from mgpp.config import validate
from mgpp.train import build, build_method

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


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_paper_block_is_what_the_report_reads(name):
    cfg = compose_train(f"experiment={name}")
    if cfg.paper is None:
        assert name.startswith("study_minilm")  # ours, not a paper table
        return
    assert cfg.paper.table.startswith("Table")
    for task, by_method in (cfg.paper.results or {}).items():
        for method, by_sparsity in by_method.items():
            for sparsity, values in by_sparsity.items():
                assert 0 <= float(sparsity) < 1
                assert all(isinstance(v, (int, float)) for v in values), (task, method, sparsity)


def test_headline_number_is_in_table1():
    cfg = compose_train("experiment=table1_deberta_glue")
    assert list(cfg.paper.results.mnli.mgpp["0.9"]) == [85.2, 84.2]


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_composes_and_sweeps_something(name):
    cfg = compose_train(f"sweep={name}", "task=mrpc", hydra=True)
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
    assert set(cfg.hydra.sweeper.params) == {"prior.sigma0_sq", "prior.sigma1_sq", "trainer.learning_rate"}


@pytest.mark.parametrize("launcher,target", [
    ("local_parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launchers_are_selectable(launcher, target):
    cfg = compose_train(f"hydra/launcher={launcher}", hydra=True)
    assert cfg.hydra.launcher._target_ == target
    get_class(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.max_num_timeout > 0  # requeued after a timeout or preemption
