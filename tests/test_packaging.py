"""``pip install .`` (not editable) gives a working CLI: the configs ship inside the wheel, and the
experiment group lists experiment files only (no measured run folders in --help)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_experiment_group_links_every_experiment_file_and_nothing_else():
    links = {p.name for p in (ROOT / "conf" / "experiment").iterdir()}
    assert links == {p.name for p in (ROOT / "experiments").glob("*.yaml")}


def test_help_lists_config_groups_not_run_folders():
    proc = subprocess.run([sys.executable, "-m", "mgpp.train", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "experiment: study_ablation" in proc.stdout and "results" not in proc.stdout
    assert len(proc.stdout.splitlines()) < 40


def test_wheel_ships_the_configs_and_the_cli_runs_from_anywhere(tmp_path):
    pip = [sys.executable, "-m", "pip"]
    had_build = (ROOT / "build").exists()
    try:
        subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist")], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    finally:
        if not had_build:  # setuptools builds in the source tree; leave the checkout as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    wheel = next((tmp_path / "dist").glob("mgpp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mgpp/conf/train.yaml", "mgpp/conf/experiment/table6_ablation.yaml", "mgpp/conf/sweep/pa_search.yaml",
            "mgpp/conf/recipe/glue_paper.yaml"} <= names
    assert not any("results/" in n for n in names)
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "mgpp.train", "experiment=table6_ablation", "task=mrpc", "--cfg", "job"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "adam_beta2: 0.98" in proc.stdout
    where = subprocess.run([sys.executable, "-c", "import mgpp; print(mgpp.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(tmp_path / "site"))  # the installed copy, not the checkout
