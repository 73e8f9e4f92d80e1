"""The report tool: Fig. 1 curves are the priors' penalties; tables average seeds correctly;
the CLI writes Markdown, CSV and PNGs, from synthetic runs and from real tiny runs."""

import csv
import json
import logging
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from mgpp.priors import L2, Laplace, MixtureGaussian
from mgpp.report import find_runs, summarize, to_csv, to_markdown
from mgpp.report.__main__ import main as report_main
from mgpp.report.figures import figure1_curves

from test_train import QUICK, ROOT, needs_glue, run_train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_figure1_curves_are_the_priors_penalties():
    lam, s0, s1 = 1e-7, 1e-10, 0.05
    curves = figure1_curves(lam, s0, s1)
    priors = {"MGP": MixtureGaussian(lam, s0, s1), "L2": L2(s1), "L1": Laplace(math.sqrt(s1 / 2))}
    zero = torch.zeros((), dtype=torch.float64)
    for panel, by_prior in curves.items():
        assert set(by_prior) == set(priors)
        for name, (x, y) in by_prior.items():
            theta = torch.as_tensor(x, dtype=torch.float64)
            expected = (priors[name].neg_log_density(theta) - priors[name].neg_log_density(zero)).numpy()
            np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # and the MGP curve is Eq. 2 written out independently
    x, y = curves["near zero"]["MGP"]
    density = lam * np.exp(-x**2 / (2 * s1)) / np.sqrt(2 * np.pi * s1) + (1 - lam) * np.exp(-x**2 / (2 * s0)) / np.sqrt(2 * np.pi * s0)
    at_zero = lam / np.sqrt(2 * np.pi * s1) + (1 - lam) / np.sqrt(2 * np.pi * s0)
    np.testing.assert_allclose(y, -np.log(density) + np.log(at_zero), rtol=1e-9, atol=1e-9)
    # near zero spans the crossover, where the penalty levels off
    assert x.max() > priors["MGP"].crossover()


PAPER = {"table": "Table 9", "metrics": {"mrpc": ["acc", "f1"]},
         "results": {"mrpc": {"mgpp": {"0.9": [80.0, 85.0]}, "losparse": {"0.9": [78.0, "N.A."]}}}}


def fake_run(root, method, seed, acc, f1, sparsity=0.9):
    run = root / "mrpc" / method / f"sparsity{sparsity}_seed{seed}"
    run.mkdir(parents=True)
    config = {"experiment_name": "fake", "seed": seed, "sparsity": sparsity, "method": {"name": method},
              "task": {"name": "mrpc", "metrics": ["accuracy", "f1"], "eval_splits": ["validation"]},
              "prior": {"lam": 1e-7}, "paper": PAPER}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("not: a run\n")  # Hydra's copy is not a second run
    metrics = {"eval_accuracy": acc, "eval_f1": f1, "sparsity": sparsity if method != "dense" else 0.0,
               "wall_time_s": 10.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    records = [{"kind": "scalars", "step": s, "pruning/threshold": 0.01 * s, "pruning/kept_min_magnitude": 0.02 * s}
               for s in (5, 10, 15)]
    records.append({"kind": "histogram", "step": 15, "name": "weights/nonzero_targets", "counts": [1, 0, 3, 2],
                    "edges": [-0.2, -0.1, 0.0, 0.1, 0.2], "num": 6, "sum": 0.1, "sum_squares": 0.05, "min": -0.2,
                    "max": 0.2})
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return metrics


def test_tables_average_seeds_and_put_the_paper_beside(tmp_path):
    values = {("mgpp", 1): (0.80, 0.86), ("mgpp", 2): (0.82, 0.88), ("mgpp", 3): (0.84, 0.87),
              ("l2", 1): (0.70, 0.80), ("l2", 2): (0.74, 0.81), ("dense", 1): (0.85, 0.90)}
    for (method, seed), (acc, f1) in values.items():
        fake_run(tmp_path, method, seed, acc, f1)
    unfinished = tmp_path / "mrpc" / "gmp" / "sparsity0.9_seed1"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text(yaml.safe_dump({"experiment_name": "fake", "seed": 1, "sparsity": 0.9,
                                                             "method": {"name": "gmp"}, "task": {"name": "mrpc"}}))
    runs = find_runs([tmp_path])
    assert len(runs) == 7 and sum(r.finished for r in runs) == 6
    rows = {r.method: r for r in summarize(runs)}
    assert set(rows) == {"dense", "l2", "mgpp"}  # gmp has no finished run yet
    for method, row in rows.items():
        accs = [100 * a for (m, _), (a, _f) in values.items() if m == method]
        f1s = [100 * f for (m, _), (_a, f) in values.items() if m == method]
        assert row.means == pytest.approx([statistics.fmean(accs), statistics.fmean(f1s)])
        if len(accs) > 1:
            assert row.stds == pytest.approx([statistics.stdev(accs), statistics.stdev(f1s)])
        else:
            assert all(math.isnan(s) for s in row.stds)
    assert rows["mgpp"].paper == [80.0, 85.0] and rows["l2"].paper is None
    assert rows["dense"].sparsity == 0.0 and rows["mgpp"].seeds == [1, 2, 3]

    markdown = to_markdown(list(rows.values()))
    assert "| 90% | mgpp | 82.0±2.0/87.0±1.0 | 3 |" in markdown
    assert "| 90% | mgpp (paper) | 80.0/85.0 | |" in markdown
    # with the paper's cells given, its baselines get rows of their own, N.A. kept as such
    from mgpp.report.tables import cells_from_runs

    cells = cells_from_runs(runs)
    full = to_markdown(list(rows.values()), cells)
    assert "| 90% | losparse (paper) | 78.0/N.A. | |" in full
    assert full.index("losparse (paper)") < full.index("| 90% | mgpp |") < full.index("mgpp (paper)")
    to_csv(list(rows.values()), tmp_path / "results.csv", cells)
    lines = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["metric"], r["paper"], r["n"]) for r in lines if r["method"] == "losparse"] == [
        ("acc", "78.0", "0"), ("f1", "N.A.", "0")]
    mgpp_acc = next(r for r in lines if r["method"] == "mgpp" and r["metric"] == "accuracy")
    assert float(mgpp_acc["mean"]) == pytest.approx(82.0) and float(mgpp_acc["std"]) == pytest.approx(2.0)
    assert mgpp_acc["paper"] == "80.0" and mgpp_acc["n"] == "3"


def test_by_key_splits_groups(tmp_path):
    fake_run(tmp_path, "mgpp", 1, 0.8, 0.8)
    other = tmp_path / "other"
    fake_run(other, "mgpp", 1, 0.6, 0.6)
    config = yaml.safe_load((other / "mrpc/mgpp/sparsity0.9_seed1/config.yaml").read_text())
    config["prior"]["lam"] = 1e-5
    (other / "mrpc/mgpp/sparsity0.9_seed1/config.yaml").write_text(yaml.safe_dump(config))
    rows = summarize(find_runs([tmp_path]), by=["prior.lam"])
    assert sorted((dict(r.by)["prior.lam"], r.means[0]) for r in rows) == [(1e-7, pytest.approx(80.0)),
                                                                         (1e-5, pytest.approx(60.0))]


def test_by_key_alternatives_join_runs_from_before_and_after_a_key_moved(tmp_path):
    """``sigma1_sq|prior.sigma1_sq``: an old run kept the variance in its prior block, a new one at
    the top level (and its prior may name it otherwise); equal values are one cell's seeds."""
    fake_run(tmp_path / "old", "l2", 1, 0.8, 0.8)
    fake_run(tmp_path / "new", "l2", 2, 0.6, 0.6)
    fake_run(tmp_path / "weak", "l2", 1, 0.7, 0.7)
    for folder, top, in_prior in (("old", None, 0.05), ("new", 0.05, None), ("weak", 1.0, None)):
        path = next((tmp_path / folder).rglob("config.yaml"))
        config = yaml.safe_load(path.read_text())
        config["prior"].pop("sigma1_sq", None)
        if in_prior is not None:
            config["prior"]["sigma1_sq"] = in_prior
        if top is not None:
            config["sigma1_sq"] = top
        path.write_text(yaml.safe_dump(config))
    rows = summarize(find_runs([tmp_path]), by=["sigma1_sq|prior.sigma1_sq"])
    assert sorted((r.by, len(r.seeds), round(r.means[0], 6)) for r in rows) == [
        ((("sigma1_sq", 0.05),), 2, 70.0), ((("sigma1_sq", 1.0),), 1, 70.0)]
    # a key set to null falls through to the next alternative, as an absent one does
    path = next((tmp_path / "new").rglob("config.yaml"))
    config = yaml.safe_load(path.read_text())
    config["sigma1_sq"], config["prior"]["sigma1_sq"] = None, 0.05
    path.write_text(yaml.safe_dump(config))
    rows = summarize(find_runs([tmp_path]), by=["sigma1_sq|prior.sigma1_sq"])
    assert sorted((r.by, len(r.seeds)) for r in rows) == [((("sigma1_sq", 0.05),), 2), ((("sigma1_sq", 1.0),), 1)]


def test_a_baseline_run_at_one_setting_is_compared_with_every_setting_of_the_reference(tmp_path):
    """A prior sweep of MGPP beside GMP (which the prior does not touch): each MGPP setting gets its
    MGPP - GMP; a baseline run at two settings, or at another model, is never paired across them."""
    from mgpp.report.tables import differences

    for folder, method, seed, acc, lam in (("a", "mgpp", 1, 0.80, 1e-7), ("b", "mgpp", 1, 0.70, 1e-5),
                                           ("c", "gmp", 1, 0.75, 1e-7), ("d", "l2", 1, 0.60, 1e-7),
                                           ("e", "l2", 1, 0.65, 1e-3)):
        fake_run(tmp_path / folder, method, seed, acc, acc)
        path = next((tmp_path / folder).rglob("config.yaml"))
        config = yaml.safe_load(path.read_text())
        config["prior"]["lam"] = lam
        path.write_text(yaml.safe_dump(config))
    diffs = {(d.other, dict(d.split)["prior.lam"]): round(d.mean, 6)
             for d in differences(find_runs([tmp_path]), others=("gmp", "l2"), by=("prior.lam",)) if d.label == "accuracy"}
    assert diffs == {("gmp", 1e-7): 5.0, ("gmp", 1e-5): -5.0, ("l2", 1e-7): 20.0}
    # another model is not a setting of the sweep: no MGPP(tiny_deberta) - GMP(tiny_bert)
    path = next((tmp_path / "b").rglob("config.yaml"))
    config = yaml.safe_load(path.read_text())
    config["model"] = {"name": "tiny_deberta"}
    path.write_text(yaml.safe_dump(config))
    for folder in "acde":
        path = next((tmp_path / folder).rglob("config.yaml"))
        config = yaml.safe_load(path.read_text())
        config["model"] = {"name": "tiny_bert"}
        path.write_text(yaml.safe_dump(config))
    runs = find_runs([tmp_path])
    assert {(d.other, dict(d.split)["prior.lam"]) for d in differences(runs, others=("gmp",), by=("prior.lam",))
            if d.label == "accuracy"} == {("gmp", 1e-7)}


def test_a_baseline_is_paired_on_the_swept_keys_it_ran_at_several_values_only(tmp_path):
    """MGPP swept over sigma0_sq and sigma1_sq, L2 over sigma1_sq only (it has no spike): every MGPP
    setting is compared with the L2 run at its sigma1_sq, whatever its sigma0_sq."""
    import shutil

    from mgpp.report.tables import differences, differences_markdown

    for folder, method, acc, s0, s1 in (("a", "mgpp", 0.80, 1e-10, 0.05), ("b", "mgpp", 0.70, 1e-6, 0.05),
                                        ("c", "mgpp", 0.90, 1e-10, 1.0), ("d", "l2", 0.60, 1e-10, 0.05),
                                        ("e", "l2", 0.75, 1e-10, 1.0)):
        fake_run(tmp_path / folder, method, 1, acc, acc)
        path = next((tmp_path / folder).rglob("config.yaml"))
        config = yaml.safe_load(path.read_text())
        config["prior"].update(sigma0_sq=s0, sigma1_sq=s1)
        path.write_text(yaml.safe_dump(config))
    by = ("prior.sigma0_sq", "prior.sigma1_sq")
    diffs = {(dict(d.split)["prior.sigma0_sq"], dict(d.split)["prior.sigma1_sq"]): (round(d.mean, 6), d.other_split)
             for d in differences(find_runs([tmp_path]), others=("l2",), by=by) if d.label == "accuracy"}
    assert diffs == {(1e-10, 0.05): (20.0, ()), (1e-6, 0.05): (10.0, (("prior.sigma0_sq", 1e-10),)),
                     (1e-10, 1.0): (15.0, ())}
    # the row names the stand-in's own setting: PA, run at one setting, stands in for every MGPP setting
    fake_run(tmp_path / "f", "pa", 1, 0.50, 0.50)
    path = next((tmp_path / "f").rglob("config.yaml"))
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "prior": {"sigma0_sq": 1e-10, "sigma1_sq": 0.05}}))
    table = differences_markdown(differences(find_runs([tmp_path]), others=("pa",), by=by))
    assert "| mrpc | 90% | mgpp − pa (prior.sigma0_sq=1e-10, prior.sigma1_sq=1.0; pa at prior.sigma1_sq=0.05) |" in table
    # an L2 run still running at sigma0_sq 1e-6 is waited for, not stood in for by the finished one at 1e-10
    unfinished = tmp_path / "g" / "mrpc" / "l2" / "sparsity0.9_seed1"
    unfinished.mkdir(parents=True)
    config = yaml.safe_load(next((tmp_path / "d").rglob("config.yaml")).read_text())
    config["prior"]["sigma0_sq"] = 1e-6
    (unfinished / "config.yaml").write_text(yaml.safe_dump(config))
    settings = {dict(d.split)["prior.sigma0_sq"] for d in differences(find_runs([tmp_path]), others=("l2",), by=by)}
    assert settings == {1e-10}  # and the 1e-10 pairs need no stand-in: L2 now varies in sigma0_sq too
    # L2 run at a second sigma0_sq: that key now matters to it, and no L2 run stands in for sigma0_sq 1e-6
    shutil.rmtree(tmp_path / "g")
    fake_run(tmp_path / "h", "l2", 1, 0.55, 0.55)
    config["prior"].update(sigma0_sq=1e-8, sigma1_sq=0.05)
    next((tmp_path / "h").rglob("config.yaml")).write_text(yaml.safe_dump(config))
    settings = {dict(d.split)["prior.sigma0_sq"] for d in differences(find_runs([tmp_path]), others=("l2",), by=by)}
    assert 1e-6 not in settings


def test_a_knob_the_method_does_not_read_neither_labels_nor_splits_it(tmp_path):
    """Every run's config carries sigma0_sq and sigma1_sq, but GMP's prior reads neither and L2's only
    sigma1_sq: swept by both, GMP is one unlabelled cell and L2 is named by sigma1_sq alone."""
    from mgpp.methods import knobs_read
    from mgpp.report.tables import differences, differences_markdown, group_label

    assert knobs_read("mgpp.priors.NoPrior") == frozenset() and knobs_read("mgpp.priors.L2") == {"sigma1_sq"}
    assert knobs_read("mgpp.priors.MixtureGaussian") == {"lam", "sigma0_sq", "sigma1_sq"}
    assert knobs_read("mgpp.schedules.CubicSparsity") == {"sparsity", "t_i", "t_f", "prune_every"}
    assert knobs_read("somewhere.Else") is None  # unknown classes are not second-guessed
    targets = {"gmp": "mgpp.priors.NoPrior", "l2": "mgpp.priors.L2", "mgpp": "mgpp.priors.MixtureGaussian"}
    for folder, method, acc, s0, s1 in (("a", "gmp", 0.70, 1e-10, 0.05), ("b", "gmp", 0.72, 1e-6, 1.0),
                                        ("c", "l2", 0.60, 1e-6, 0.05), ("d", "mgpp", 0.80, 1e-6, 0.05)):
        fake_run(tmp_path / folder, method, 1 if folder != "b" else 2, acc, acc)
        path = next((tmp_path / folder).rglob("config.yaml"))
        config = yaml.safe_load(path.read_text())
        config.update(sigma0_sq=s0, sigma1_sq=s1, prior={"_target_": targets[method]},
                      schedule={"_target_": "mgpp.schedules.CubicSparsity"})
        path.write_text(yaml.safe_dump(config))
    runs, by = find_runs([tmp_path]), ("sigma0_sq", "sigma1_sq")
    rows = {group_label(r.method, r.by): r.n for r in summarize(runs, by=by)}
    assert rows == {"gmp": 2, "l2 (sigma1_sq=0.05)": 1, "mgpp (sigma0_sq=1e-06, sigma1_sq=0.05)": 1}
    table = differences_markdown(differences(runs, others=("l2", "gmp"), by=by))
    assert "| mrpc | 90% | mgpp − l2 (sigma0_sq=1e-06, sigma1_sq=0.05) |" in table
    assert "| mrpc | 90% | mgpp − gmp (sigma0_sq=1e-06, sigma1_sq=0.05) |" in table and "gmp at" not in table


def test_the_kept_weights_table_reads_each_runs_last_magnitude_histogram(tmp_path):
    """Mean log10 |theta| from the histogram's sum and count; shares below 1e-2 and 1e-3 from its bins,
    the bin that straddles a bound counted in proportion; over seeds, one row per pruned cell."""
    from mgpp.report.tables import kept_weights, kept_weights_markdown, share_below

    edges = [-4.0, -3.0, -2.5, -2.0, -1.0, 0.0]
    assert share_below({"counts": [1, 1, 2, 4, 2], "edges": edges}, -2.0) == pytest.approx(0.4)
    assert share_below({"counts": [0, 0, 0, 5, 5], "edges": edges}, -1.5) == pytest.approx(0.25)
    for method, seed, counts in (("l2", 1, [1, 1, 2, 4, 2]), ("l2", 2, [0, 1, 1, 4, 4]), ("gmp", 1, [0, 0, 0, 0, 10]),
                                 ("dense", 1, [0, 0, 0, 0, 10])):
        fake_run(tmp_path, method, seed, 0.8, 0.8, sparsity=0.0 if method == "dense" else 0.9)
        log = next(tmp_path.rglob(f"{method}/*seed{seed}/log.jsonl"))
        record = {"kind": "histogram", "step": 20, "name": "weights/nonzero_log10_magnitude", "counts": counts,
                  "edges": edges, "num": sum(counts), "sum": -1.5 * sum(counts) if method == "l2" else -0.5 * 10}
        log.write_text(log.read_text() + json.dumps(record) + "\n")
    kept = {k.label: k for k in kept_weights(find_runs([tmp_path]))}
    assert set(kept) == {"gmp", "l2"}  # the dense run prunes nothing
    assert kept["l2"].mean_log10 == pytest.approx([-1.5, -1.5]) and kept["gmp"].mean_log10 == [-0.5]
    assert kept["l2"].below_1e2 == pytest.approx([0.4, 0.2]) and kept["l2"].below_1e3 == pytest.approx([0.1, 0.0])
    table = kept_weights_markdown(list(kept.values()))
    assert "| mrpc | 90% | l2 | -1.50±0.00 | 30.0±14.1% | 5.0±7.1% | 2 |" in table


def test_cli_writes_markdown_csv_and_pngs(tmp_path, capsys):
    for method in ("mgpp", "l2", "gmp"):
        fake_run(tmp_path / "runs", method, 1, 0.8, 0.8)
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert "mgpp (paper)" in (out / "report.md").read_text() and (out / "results.csv").exists()
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["fig1_penalties.png", "fig2a_fake_mrpc_sparsity0.9.png", "fig2b_fake_mrpc_sparsity0.9.png",
                    "figA1_prior_knobs.png"]
    for name in pngs:
        assert (out / "figures" / name).read_bytes()[:8] == PNG_MAGIC


def test_cli_needs_something_to_read(tmp_path, capsys, monkeypatch):
    """A missing path, or folders without a finished run, is one line naming them and exit status 1;
    the traceback only with --debug or HYDRA_FULL_ERROR=1."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit):
        report_main([])
    capsys.readouterr()
    assert report_main(["/nonexistent/sweep", "--no-figures", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m mgpp.report: error: no such run or sweep folder (nor experiment file): /nonexistent/sweep"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="no such run"):
        report_main(["/nonexistent/sweep", "--no-figures", "--debug"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(FileNotFoundError, match="no such run"):
        report_main(["/nonexistent/sweep", "--no-figures"])
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    # a folder of unfinished runs only (and one of no runs at all)
    unfinished = tmp_path / "runs" / "mrpc" / "mgpp" / "sparsity0.9_seed1"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text(yaml.safe_dump({"experiment_name": "fake", "seed": 1, "sparsity": 0.9,
                                                             "method": {"name": "mgpp"}, "task": {"name": "mrpc"}}))
    (tmp_path / "empty").mkdir()
    for folder, says in (("runs", "no finished run in {}: 1 runs found, none finished"), ("empty", "no run found in {}")):
        assert report_main([str(tmp_path / folder), "--no-figures", "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says.format(tmp_path / folder) in err[0], err
    assert not (tmp_path / "out").exists()


@needs_glue
def test_report_on_real_tiny_runs(tmp_path):
    run_train("-m", *QUICK, "model=tiny_bert", "task=rte", "method=gmp,mgpp", "seed=1,2", "logger=[jsonl]",
              "save_model=false", "experiment_name=tiny", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    proc = subprocess.run([sys.executable, "-m", "mgpp.report", str(tmp_path / "sweep"), "--out", str(tmp_path / "out"),
                           "--fig2a-methods", "mgpp,gmp"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert {(r["method"], r["metric"]) for r in lines} == {("gmp", "accuracy"), ("mgpp", "accuracy")}
    for line in lines:
        accs = [100 * json.loads(p.read_text())["eval_accuracy"]
                for p in (tmp_path / "sweep" / "rte" / line["method"]).rglob("metrics.json")]
        assert len(accs) == 2 and line["seeds"] == "1 2"
        assert float(line["mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-4)
        assert float(line["std"]) == pytest.approx(statistics.stdev(accs), abs=1e-4)
    figures = {p.name for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert {"fig1_penalties.png", "figA1_prior_knobs.png", "fig2a_tiny_rte_sparsity0.9.png",
            "fig2b_tiny_rte_sparsity0.9.png"} <= figures


def test_unreachable_wandb_falls_back_to_local_runs(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))  # no stored login either
    fake_run(tmp_path / "runs", "mgpp", 1, 0.8, 0.8)
    assert report_main([str(tmp_path / "runs"), "--wandb", "nobody/nothing", "--no-figures",
                        "--out", str(tmp_path / "out")]) == 0
    assert "not readable" in caplog.text and "| 90% | mgpp | 80.0/80.0 | 1 |" in (tmp_path / "out/report.md").read_text()


def test_weight_histograms_count_the_nonzero_targets():
    from mgpp.training_log import log_magnitude_histogram, weight_histogram

    params = [torch.tensor([[0.0, 0.5, -0.05], [0.0, 1e-10, 2.0]]), torch.tensor([[-0.005, 0.0]])]
    linear = weight_histogram(params, bins=8)
    assert linear.num == sum(linear.counts) == 5 and linear.edges[0] == -2.0 and linear.edges[-1] == 2.0
    logs = log_magnitude_histogram(params, bins=10, low=1e-8)
    assert logs.num == sum(logs.counts) == 5
    assert logs.edges[0] == pytest.approx(-8.0) and logs.edges[-1] == pytest.approx(math.log10(2.0))
    assert logs.counts[0] == 1  # 1e-10 sits below `low`: first bin
    centers = np.log10([0.5, 0.05, 2.0, 0.005])
    expected = np.histogram(centers, bins=np.asarray(logs.edges))[0]
    assert list(np.asarray(logs.counts[1:]) - expected[1:]) == [0] * 9


def test_collapsed_runs_are_marked_and_differences_are_paired_by_seed(tmp_path):
    from mgpp.report.tables import differences, differences_markdown, is_collapsed

    values = {("mgpp", 1): 0.80, ("mgpp", 2): 0.84, ("mgpp", 3): 0.82, ("l2", 1): 0.70, ("l2", 2): 0.75,
              ("l2", 3): 0.74, ("gmp", 1): 0.684}
    for (method, seed), acc in values.items():
        metrics = fake_run(tmp_path, method, seed, acc, acc)
        run = tmp_path / "mrpc" / method / f"sparsity0.9_seed{seed}"
        # gmp seed 1 predicts the majority class for every dev example
        metrics["eval_majority_prediction_fraction"] = 1.0 if method == "gmp" else 0.7
        (run / "metrics.json").write_text(json.dumps(metrics))
    runs = find_runs([tmp_path])
    assert is_collapsed({"eval_majority_prediction_fraction": 0.995}) and not is_collapsed({"eval_accuracy": 0.5})
    assert is_collapsed({"eval_prediction_std": 0.0}) and not is_collapsed({"eval_prediction_std": 0.8})
    rows = {r.method: r for r in summarize(runs)}
    assert rows["gmp"].collapsed == 1 and rows["mgpp"].collapsed == 0
    markdown = to_markdown(list(rows.values()))
    assert "68.4/68.4 (1/1 collapsed)" in markdown and '(k/n collapsed)": k of the n seeds' in markdown

    diffs = {(d.other, d.label): d for d in differences(runs)}
    l2 = diffs[("l2", "accuracy")]
    assert l2.diffs == pytest.approx([10.0, 9.0, 8.0]) and l2.n == 3 and l2.mean == pytest.approx(9.0)
    from scipy.stats import t

    half = t.ppf(0.975, 2) * statistics.stdev([10.0, 9.0, 8.0]) / math.sqrt(3)
    assert l2.interval() == pytest.approx((9.0 - half, 9.0 + half))
    gmp = diffs[("gmp", "accuracy")]
    assert gmp.n == 1 and all(math.isnan(x) for x in gmp.interval())  # one shared seed: no interval
    text = differences_markdown(list(diffs.values()))
    assert f"| mrpc | 90% | mgpp − l2 | accuracy +9.0 [{9 - half:+.1f}, {9 + half:+.1f}]" in text


def test_a_difference_that_rounds_to_zero_reads_plus_zero():
    """Opposite per-seed differences average to about -1e-16, which must not print as a deficit."""
    from mgpp.report.tables import Difference, signed

    assert signed(-1e-16) == "+0.0" and signed(-0.04) == "+0.0" and signed(-0.05, 2) == "-0.05"
    assert signed(0.3) == "+0.3" and signed(-0.3) == "-0.3"
    diff = Difference("e", "mrpc", 0.9, "mgpp", "l2", "accuracy", [-0.1, -0.2, 0.3], [1, 2, 3])
    assert diff.mean < 0 and diff.text().startswith("+0.0 [-")  # the mean is -5.6e-17, not 0


def test_one_methods_two_settings_are_compared_by_pinning_a_by_key(tmp_path, caplog):
    """``mgpp@sigma1_sq=1.0`` against ``mgpp@sigma1_sq=0.05``: MGPP's slab against itself, paired by
    seed; L2 (no spike: its sigma0_sq is None) pinned the same way stands in at its own setting."""
    from mgpp.report.__main__ import parse_args
    from mgpp.report.tables import differences, differences_markdown, parse_method_spec

    for method, s1, seed, acc in (("mgpp", 0.05, 1, 0.70), ("mgpp", 0.05, 2, 0.69), ("mgpp", 1.0, 1, 0.77),
                                  ("mgpp", 1.0, 2, 0.74), ("l2", 0.05, 1, 0.71), ("l2", 0.05, 2, 0.66),
                                  ("l2", 1.0, 1, 0.60), ("l2", 1.0, 2, 0.60)):
        folder = tmp_path / f"s{s1}"
        fake_run(folder, method, seed, acc, acc)
        path = folder / "mrpc" / method / f"sparsity0.9_seed{seed}" / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["prior"].update(sigma1_sq=s1, sigma0_sq=None if method == "l2" else 1e-10)
        path.write_text(yaml.safe_dump(config))
    runs, by = find_runs([tmp_path]), ("prior.sigma0_sq", "prior.sigma1_sq")
    pinned = ("mgpp@prior.sigma1_sq=0.05", "l2@prior.sigma1_sq=5e-2")  # values compare as numbers
    found = {(d.other, d.other_split): d.diffs for d in differences(runs, "mgpp@prior.sigma1_sq=1", pinned, by)
             if d.label == "accuracy"}
    assert found.keys() == {("mgpp", (("prior.sigma1_sq", 0.05),)),
                            ("l2", (("prior.sigma0_sq", None), ("prior.sigma1_sq", 0.05)))}
    assert found["mgpp", (("prior.sigma1_sq", 0.05),)] == pytest.approx([7.0, 5.0])
    assert found["l2", (("prior.sigma0_sq", None), ("prior.sigma1_sq", 0.05))] == pytest.approx([6.0, 8.0])
    # unpinned, L2 stands in at the reference's own sigma1_sq (1.0), not at the pinned 0.05
    unpinned = {d.other_split: d.diffs for d in differences(runs, "mgpp@prior.sigma1_sq=1", ("l2",), by)
                if d.label == "accuracy"}
    assert unpinned == {(("prior.sigma0_sq", None),): pytest.approx([17.0, 14.0])}
    table = differences_markdown(differences(runs, "mgpp@prior.sigma1_sq=1.0", ("mgpp@prior.sigma1_sq=0.05",), by))
    assert "| mgpp − mgpp (prior.sigma0_sq=1e-10, prior.sigma1_sq=1.0; mgpp at prior.sigma1_sq=0.05) |" in table
    # unpinned, a method is never compared with its own cell, and the reference's other settings are left out
    assert not differences(runs, "mgpp@prior.sigma1_sq=1.0", ("mgpp",), by)
    # a pin no run matches (a value never run, a knob the method does not read) yields no row, with a warning
    with caplog.at_level(logging.WARNING):
        assert not differences(runs, "mgpp@prior.sigma1_sq=0.5", ("l2",), by)
        assert not differences(runs, "mgpp", ("l2@prior.sigma0_sq=1e-10",), by)
    assert "mgpp@prior.sigma1_sq=0.5: no finished run" in caplog.text
    assert "l2@prior.sigma0_sq=1e-10: no finished run" in caplog.text
    # a pin names a --by key and a value; a misspelt one fails with the keys there are, before runs are read
    assert parse_method_spec("mgpp@prior.sigma1_sq=1.0", by) == ("mgpp", {"prior.sigma1_sq": 1.0})
    # any alternative of a --by key names it; None and text are values too
    assert parse_method_spec("l2@b=None", ["a|b"]) == ("l2", {"a": None})
    assert parse_method_spec("pa@a=cubic", ["a|b"]) == ("pa", {"a": "cubic"})
    with pytest.raises(ValueError, match="'sigma1' is not a --by key .*prior.sigma0_sq, prior.sigma1_sq"):
        parse_method_spec("mgpp@sigma1=1.0", by)
    with pytest.raises(ValueError, match="no --by keys were given"):
        parse_method_spec("mgpp@sigma1=1.0")
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path), "--by", *by, "--compare", "l2@prior.sigma1_sq"])


def test_a_run_no_better_than_the_commonest_label_is_marked_by_its_tasks_chance_level(tmp_path):
    from mgpp.report.tables import chance_levels, is_collapsed

    # PA predicts both classes but is at chance (68.4% of the dev labels are positive); it ran before
    # runs recorded the chance level, which a later run of the same task did
    for method, seed, acc in (("pa", 1, 0.686), ("mgpp", 1, 0.699), ("mgpp", 2, 0.70)):
        metrics = fake_run(tmp_path, method, seed, acc, 0.8)
        metrics["eval_majority_prediction_fraction"] = 0.81
        if seed == 2:
            metrics["eval_majority_label_fraction"] = 0.684
        (tmp_path / "mrpc" / method / f"sparsity0.9_seed{seed}" / "metrics.json").write_text(json.dumps(metrics))
    runs = find_runs([tmp_path])
    assert chance_levels(runs) == {"mrpc": {"eval_": 0.684}}
    assert is_collapsed({"eval_accuracy": 0.69, "eval_majority_label_fraction": 0.684})  # its own record
    assert not is_collapsed({"eval_accuracy": 0.70, "eval_majority_label_fraction": 0.684})
    rows = {r.method: r for r in summarize(runs)}
    assert rows["pa"].collapsed == 1 and rows["mgpp"].collapsed == 0
    assert "(1/1 collapsed)" in rows["pa"].cell() and "commonest dev label" in to_markdown(list(rows.values()))


def test_the_gap_change_between_sparsities_is_paired_by_seed(tmp_path):
    from mgpp.report.tables import differences, differences_markdown, gap_changes

    # mgpp - l2 per seed: 1, 2, 3 points at 80%; 4, 6, 5 at 90% -> changes 3, 4, 2
    values = {(0.8, "mgpp", 1): 0.81, (0.8, "mgpp", 2): 0.82, (0.8, "mgpp", 3): 0.83,
              (0.8, "l2", 1): 0.80, (0.8, "l2", 2): 0.80, (0.8, "l2", 3): 0.80,
              (0.9, "mgpp", 1): 0.74, (0.9, "mgpp", 2): 0.76, (0.9, "mgpp", 3): 0.75,
              (0.9, "l2", 1): 0.70, (0.9, "l2", 2): 0.70, (0.9, "l2", 3): 0.70, (0.9, "l2", 4): 0.60}
    for (sparsity, method, seed), acc in values.items():
        fake_run(tmp_path, method, seed, acc, acc, sparsity=sparsity)
    diffs = differences(find_runs([tmp_path]), others=("l2",))
    changes = [c for c in gap_changes(diffs) if c.label == "accuracy"]
    assert len(changes) == 1
    change = changes[0]
    assert (change.from_sparsity, change.sparsity, change.seeds) == (0.8, 0.9, [1, 2, 3])
    assert change.diffs == pytest.approx([3.0, 4.0, 2.0]) and change.mean == pytest.approx(3.0)
    assert "| mrpc | 80% → 90% | mgpp − l2 | accuracy +3.0 [" in differences_markdown(diffs)

    # a second prior setting at 90% only (as a follow-up sweep adds): split apart, never paired with 80%;
    # every row of the table then names its lam (the 80% ones too), so the 80% cells pair with the 90%
    # cells at their own lam whether --by names the key or not
    for method, acc in (("mgpp", 0.72), ("l2", 0.71)):
        fake_run(tmp_path / "variant", method, 1, acc, acc)
        config = tmp_path / "variant" / "mrpc" / method / "sparsity0.9_seed1" / "config.yaml"
        config.write_text(config.read_text().replace("lam: 1.0e-07", "lam: 1.0e-05"))
    runs = find_runs([tmp_path])
    for by in ((), ("prior.lam",)):
        changes = [c for c in gap_changes(differences(runs, others=("l2",), by=by)) if c.label == "accuracy"]
        assert all(c.from_sparsity < c.sparsity for c in changes)
        assert [c.diffs for c in changes] == [[3.0, 4.0, 2.0]]
    text = differences_markdown(differences(runs, others=("l2",), by=("prior.lam",)))
    assert "| mrpc | 90% | mgpp − l2 (prior.lam=1e-05) | accuracy +1.0" in text


def test_dev_curves_figure_averages_seeds(tmp_path):
    from mgpp.report.figures import figure_dev_curves

    for method, seed, offset in (("mgpp", 1, 0.0), ("mgpp", 2, 0.02), ("l2", 1, -0.05)):
        fake_run(tmp_path, method, seed, 0.8, 0.8)
        log = tmp_path / "mrpc" / method / f"sparsity0.9_seed{seed}" / "log.jsonl"
        records = [{"kind": "scalars", "step": s, "eval_accuracy": 0.5 + offset + s / 100} for s in (10, 20, 30)]
        log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    runs = find_runs([tmp_path])
    groups = {m: [r for r in runs if r.get("method.name") == m] for m in ("mgpp", "l2")}
    path = figure_dev_curves(groups, tmp_path / "dev.png", "eval_accuracy")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert figure_dev_curves(groups, tmp_path / "none.png", "eval_f1") is None


def test_figures_draw_a_line_per_setting_of_a_method(tmp_path):
    """Two priors of MGPP are two lines, told apart by colour, each still in MGPP's line style."""
    from mgpp.report.__main__ import _labelled_groups
    from mgpp.report.figures import METHOD_STYLE, figure2a, figure2b, label_styles

    fake_run(tmp_path, "l2", 1, 0.7, 0.7)
    fake_run(tmp_path, "mgpp", 1, 0.8, 0.8)
    fake_run(tmp_path / "other", "mgpp", 1, 0.6, 0.6)
    path = tmp_path / "other/mrpc/mgpp/sparsity0.9_seed1/config.yaml"
    config = yaml.safe_load(path.read_text())
    config["prior"]["lam"] = 1e-5
    path.write_text(yaml.safe_dump(config))
    groups = _labelled_groups(find_runs([tmp_path]), ["prior.lam"])
    assert sorted(groups) == ["l2 (prior.lam=1e-07)", "mgpp (prior.lam=1e-05)", "mgpp (prior.lam=1e-07)"]
    styles = label_styles(groups)
    mgpp = [styles[k] for k in groups if k.startswith("mgpp")]
    assert len({s["color"] for s in styles.values()}) == 3 and METHOD_STYLE["mgpp"]["color"] in {s["color"] for s in mgpp}
    assert {s["ls"] for s in mgpp} == {METHOD_STYLE["mgpp"]["ls"]}
    for figure in (figure2a, figure2b):
        assert figure(groups, tmp_path / f"{figure.__name__}.png").read_bytes()[:8] == PNG_MAGIC


def write_run(root, name, config, metrics):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_unlike_runs_are_never_averaged_as_seeds(tmp_path):
    """A tiny_bert and a tiny_deberta run of one task and method are two rows, not '2 seeds'; dense runs
    sit at 0% whatever their config's sparsity said."""
    task = {"_target_": "mgpp.tasks.GlueTask", "name": "rte", "metrics": ["accuracy"], "eval_splits": ["validation"]}
    for i, (model, method, sparsity, acc) in enumerate([("tiny_bert", "mgpp", 0.9, 0.6), ("tiny_deberta", "mgpp", 0.9, 0.5),
                                                        ("tiny_bert", "dense", 0.9, 0.7), ("tiny_bert", "dense", 0.0, 0.8)]):
        config = {"experiment_name": "mix", "seed": i, "sparsity": sparsity, "method": {"name": method},
                  "model": {"name": model}, "task": task}
        write_run(tmp_path, f"run{i}", config, {"eval_accuracy": acc, "target_sparsity": 0.0 if method == "dense" else sparsity})
    rows = summarize(find_runs([tmp_path]))
    mgpp = sorted((dict(r.by).get("model.name"), r.means[0], r.n) for r in rows if r.method == "mgpp")
    assert mgpp == [("tiny_bert", pytest.approx(60.0), 1), ("tiny_deberta", pytest.approx(50.0), 1)]
    dense = [r for r in rows if r.method == "dense"]
    assert len(dense) == 1 and dense[0].sparsity == 0.0 and dense[0].n == 2 and dense[0].means[0] == pytest.approx(75.0)
    markdown = to_markdown(rows)
    assert "mgpp (model.name=tiny_deberta)" in markdown and "kept apart" in markdown


@pytest.mark.parametrize("target,metrics,values,shown", [
    ("mgpp.tasks.SummarizationTask", ["rouge1", "rouge2", "rougeLsum"], [42.9, 19.7, 34.8], "42.9/19.7/34.8"),
    ("mgpp.tasks.MaskedLMTask", ["loss", "perplexity"], [2.5, 12.18], "2.5/12.2"),
    ("mgpp.tasks.SquadTask", ["exact_match", "f1"], [78.0, 86.2], "78.0/86.2"),
])
def test_metric_scale_is_the_tasks(tmp_path, target, metrics, values, shown):
    """ROUGE, MLM loss/perplexity and SQuAD EM/F1 are not multiplied by 100 (GLUE fractions are)."""
    task = {"_target_": target, "name": "t", "metrics": metrics}
    write_run(tmp_path, "run", {"experiment_name": "e", "seed": 1, "sparsity": 0.5, "method": {"name": "mgpp"},
                                "model": {"name": "m"}, "task": task},
              {f"eval_{m}": v for m, v in zip(metrics, values)} | {"target_sparsity": 0.5})
    row = summarize(find_runs([tmp_path]))[0]
    assert row.means == pytest.approx(values) and f"| 50% | mgpp | {shown} | 1 |" in to_markdown([row])


def test_a_failing_logger_is_dropped_and_never_stops_the_run():
    from mgpp.loggers import Loggers, MemoryLogger

    class Broken(MemoryLogger):
        def log(self, metrics, step):
            raise OSError(28, "No space left on device")

    good, broken = MemoryLogger(), Broken()
    loggers = Loggers([broken, good])
    loggers.log({"train/loss": 1.0}, 1)
    loggers.log({"train/loss": 0.5}, 2)
    loggers.finish({"eval_accuracy": 0.7})
    assert loggers.backends == [good] and good.scalars("train/loss") == {1: 1.0, 2: 0.5}
    assert good.records[-1]["kind"] == "summary"


def test_wandb_online_without_a_reachable_server_falls_back_to_offline(tmp_path, monkeypatch):
    import time

    from mgpp.loggers import WandbLogger

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    start = time.time()
    logger = WandbLogger(tmp_path, run_config={"a": 1}, mode="online", init_timeout=5)
    logger.log({"train/loss": 1.0}, 1)
    logger.finish({"eval_accuracy": 0.5})
    assert time.time() - start < 90 and logger.run.settings.mode == "offline"
    assert list((tmp_path / "wandb").glob("offline-run-*"))
