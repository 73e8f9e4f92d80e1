"""The report over a folder of mixed runs (other models, other settings): every row names what sets it
apart, a difference is computed within matching rows or the report says why not; Fig. 2a shows every
seed of every method that prunes, Fig. 2b draws short runs as points and skips "no prune yet" values.
Synthetic run folders only (config.yaml, metrics.json, log.jsonl), as tests/test_report.py makes them."""

import json
import math

import pytest
import yaml

from mgpp.report import find_runs, summarize
from mgpp.report.__main__ import _labelled_groups
from mgpp.report.__main__ import main as report_main
from mgpp.report.tables import compare, differences_markdown, group_label

TASK = {"_target_": "mgpp.tasks.GlueTask", "name": "rte", "metrics": ["accuracy"], "eval_splits": ["validation"]}
PRIORS = {"gmp": "mgpp.priors.NoPrior", "l2": "mgpp.priors.L2", "mgpp": "mgpp.priors.MixtureGaussian",
          "dense": "mgpp.priors.NoPrior"}


def log10_histogram(step: int, low: float = -4.0, counts=(1, 2, 3, 4)) -> dict:
    edges = [low + i * (-low / len(counts)) for i in range(len(counts) + 1)]
    return {"kind": "histogram", "step": step, "name": "weights/nonzero_log10_magnitude", "counts": list(counts),
            "edges": edges, "num": sum(counts), "sum": -1.0 * sum(counts)}


def make_run(root, name, method, seed, acc, model="tiny_bert", sparsity=0.9, records=None, **top):
    """A finished run folder: config.yaml (``top``: more top-level keys), metrics.json, log.jsonl."""
    folder = root / name
    folder.mkdir(parents=True)
    sparsity = 0.0 if method == "dense" else sparsity
    config = {"experiment_name": "mix", "seed": seed, "sparsity": sparsity, "sigma1_sq": 0.05,
              "method": {"name": method}, "model": {"name": model}, "task": TASK,
              "prior": {"_target_": PRIORS.get(method, "somewhere.Else")},
              "schedule": {"_target_": "mgpp.schedules.CubicSparsity"}, **top}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps({"eval_accuracy": acc, "target_sparsity": sparsity,
                                                     "sparsity": sparsity}))
    if records is None:
        records = [{"kind": "scalars", "step": s, "pruning/kept_min_magnitude": 0.01 * s} for s in (10, 20, 30)]
        records.append(log10_histogram(30))
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def method_rows(markdown: str) -> list[str]:
    """The method column of the results table (not the differences or kept-weights tables)."""
    table = markdown.split("\n\n")[markdown.split("\n\n").index("## mix") + 1]
    return [line.split(" | ")[1] for line in table.splitlines()[2:]]


def test_three_runs_of_two_models_are_all_labelled_and_mgpp_minus_gmp_is_kept(tmp_path, capsys):
    """MGPP on two models, GMP on one: all three rows name their model (GMP's too, though its cell holds
    one model only), MGPP - GMP is computed for the model both ran, and the other model's missing GMP
    is one line that says why."""
    make_run(tmp_path / "outputs", "a", "mgpp", 1, 0.60, model="tiny_bert")
    make_run(tmp_path / "outputs", "b", "mgpp", 1, 0.55, model="tiny_deberta")
    make_run(tmp_path / "outputs", "c", "gmp", 1, 0.58, model="tiny_bert")
    assert report_main([str(tmp_path / "outputs"), "--out", str(tmp_path / "out"), "--compare", "gmp"]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert method_rows(markdown) == ["gmp (model.name=tiny_bert)", "mgpp (model.name=tiny_bert)",
                                     "mgpp (model.name=tiny_deberta)"]
    assert "| rte | 90% | mgpp − gmp (model.name=tiny_bert) | accuracy +2.0 | 1 |" in markdown
    assert ("- mgpp − gmp at rte 90% (model.name=tiny_deberta): no gmp run matches this setting "
            "(gmp ran at: model.name=tiny_bert)") in markdown
    # the figures name their lines as the table names its rows
    groups = _labelled_groups(find_runs([tmp_path / "outputs"]), [])
    assert list(groups) == ["gmp (model.name=tiny_bert)", "mgpp (model.name=tiny_bert)",
                            "mgpp (model.name=tiny_deberta)"]


def test_a_key_that_differs_in_one_cell_labels_every_row_of_its_table(tmp_path):
    """Two learning rates of MGPP, GMP at one of them, L2 and a dense run at the other task's: every row
    (the 80% ones and the dense reference too) names its learning rate, and each MGPP row is compared
    with the GMP run at its own learning rate only."""
    for name, method, seed, acc, lr, sparsity in (("a", "mgpp", 1, 0.60, 1e-4, 0.9), ("b", "mgpp", 1, 0.50, 5e-5, 0.9),
                                                  ("c", "gmp", 1, 0.58, 1e-4, 0.9),
                                                  ("d", "mgpp", 1, 0.65, 1e-4, 0.8),
                                                  ("e", "dense", 1, 0.70, 1e-4, 0.0)):
        make_run(tmp_path, name, method, seed, acc, sparsity=sparsity, trainer={"learning_rate": lr})
    runs = find_runs([tmp_path])
    labels = sorted(group_label(r.method, r.by) for r in summarize(runs))
    assert labels == ["dense (trainer.learning_rate=0.0001)", "gmp (trainer.learning_rate=0.0001)",
                      "mgpp (trainer.learning_rate=0.0001)", "mgpp (trainer.learning_rate=0.0001)",
                      "mgpp (trainer.learning_rate=5e-05)"]
    diffs, unpaired = compare(runs, others=("gmp",))
    assert [(d.split, round(d.mean, 6)) for d in diffs] == [((("trainer.learning_rate", 1e-4),), 2.0)]
    assert [(u.sparsity, u.split) for u in unpaired] == [(0.8, (("trainer.learning_rate", 1e-4),)),
                                                         (0.9, (("trainer.learning_rate", 5e-5),))]
    text = differences_markdown(diffs, unpaired)
    assert ("- mgpp − gmp at rte 80% (trainer.learning_rate=0.0001): no finished gmp run at this task and "
            "sparsity") in text
    assert ("- mgpp − gmp at rte 90% (trainer.learning_rate=5e-05): no gmp run matches this setting "
            "(gmp ran at: trainer.learning_rate=0.0001)") in text


def test_a_knob_a_baseline_does_not_read_neither_labels_it_nor_stops_the_comparison(tmp_path):
    """MGPP at two slabs (no --by): its rows name sigma1_sq; GMP's prior reads no sigma1_sq, so its row
    is unlabelled and stands in for both; a method absent from the folder is one line."""
    make_run(tmp_path, "a", "mgpp", 1, 0.60, sigma1_sq=0.05)
    make_run(tmp_path, "b", "mgpp", 1, 0.70, sigma1_sq=1.0)
    make_run(tmp_path, "c", "gmp", 1, 0.58, sigma1_sq=0.05)
    runs = find_runs([tmp_path])
    assert sorted(group_label(r.method, r.by) for r in summarize(runs)) == [
        "gmp", "mgpp (sigma1_sq=0.05)", "mgpp (sigma1_sq=1.0)"]
    diffs, unpaired = compare(runs, others=("gmp", "pa"))
    assert sorted((dict(d.split)["sigma1_sq"], round(d.mean, 6)) for d in diffs) == [(0.05, 2.0), (1.0, 12.0)]
    text = differences_markdown(diffs, unpaired)
    assert "| rte | 90% | mgpp − gmp (sigma1_sq=1.0) | accuracy +12.0 | 1 |" in text
    assert "\n- mgpp − pa: no pa run in this experiment\n" in text and text.count("- mgpp − pa") == 1


def test_the_same_runs_report_unchanged_where_nothing_differs(tmp_path):
    """One model, one setting per method: no label, no 'not compared' line."""
    for name, method, seed, acc in (("a", "mgpp", 1, 0.6), ("b", "mgpp", 2, 0.62), ("c", "gmp", 1, 0.58),
                                    ("d", "gmp", 2, 0.57)):
        make_run(tmp_path, name, method, seed, acc)
    runs = find_runs([tmp_path])
    assert sorted(group_label(r.method, r.by) for r in summarize(runs)) == ["gmp", "mgpp"]
    diffs, unpaired = compare(runs, others=("gmp",))
    assert len(diffs) == 1 and diffs[0].seeds == [1, 2] and not unpaired


# -- figures ---------------------------------------------------------------------------------------
def seeded_groups(tmp_path):
    """MGPP x 3 seeds, L2 x 2, GMP x 3, dense x 1; one L2 seed logged only the older linear histogram."""
    linear = {"kind": "histogram", "step": 30, "name": "weights/nonzero_targets", "counts": [1, 0, 3, 2],
              "edges": [-0.2, -0.1, 0.0, 0.1, 0.2], "num": 6}
    for method, seeds in (("mgpp", (1, 2, 3)), ("l2", (1, 2)), ("gmp", (1, 2, 3)), ("dense", (1,))):
        for seed in seeds:
            records = [linear] if (method, seed) == ("l2", 2) else [log10_histogram(30, low=-3.0 - seed)]
            make_run(tmp_path, f"{method}{seed}", method, seed, 0.6, records=records)
    return _labelled_groups(find_runs([tmp_path]), [])


def test_figure2a_draws_every_seed_of_every_method_that_prunes(tmp_path):
    from matplotlib.patches import StepPatch

    from mgpp.report.figures import draw_figure2a, figure2a, figure2a_histograms

    groups = seeded_groups(tmp_path)
    panels = figure2a_histograms(groups)
    assert [({label: sorted(seeds) for label, seeds in hists.items()}, log) for hists, log in panels] == [
        ({"gmp": [1, 2, 3], "l2": [1], "mgpp": [1, 2, 3]}, True), ({"l2": [2]}, False)]  # dense prunes nothing
    fig = draw_figure2a(groups)
    log_ax, linear_ax = fig.axes
    stairs = [p.get_gid() for p in log_ax.patches if isinstance(p, StepPatch)]
    assert sorted(stairs) == ["gmp seed 1", "gmp seed 2", "gmp seed 3", "l2 seed 1", "mgpp seed 1", "mgpp seed 2",
                              "mgpp seed 3"]
    legend = [t.get_text() for t in log_ax.get_legend().get_texts()]
    assert legend == ["gmp (seeds 1, 2, 3; 10 nonzero)", "l2 (seed 1; 10 nonzero)", "mgpp (seeds 1, 2, 3; 10 nonzero)"]
    assert [p.get_gid() for p in linear_ax.patches if isinstance(p, StepPatch)] == ["l2 seed 2"]
    # the seeds of one method share its colour
    colours = {p.get_gid(): p.get_edgecolor() for p in log_ax.patches if isinstance(p, StepPatch)}
    assert colours["mgpp seed 1"] == colours["mgpp seed 3"] != colours["gmp seed 1"]
    import matplotlib.pyplot as plt

    plt.close(fig)
    # --fig2a-methods still narrows it; dense asked for by name still prunes nothing
    assert [sorted(h) for h, _ in figure2a_histograms(groups, ["mgpp", "dense"])] == [["mgpp"]]
    assert figure2a({"dense": groups["dense"]}, tmp_path / "none.png") is None


def test_figure2b_draws_a_short_run_as_points_and_skips_values_not_logged_yet(tmp_path):
    """A record without the boundary, with it None, NaN or 0.0 (before the first prune) is no point;
    a series of one point is a marker named as such, with a note when every series is one point."""
    import matplotlib.pyplot as plt

    from mgpp.report.figures import draw_figure2b

    key = "pruning/kept_min_magnitude"
    one = [{"kind": "scalars", "step": 1, key: None}, {"kind": "scalars", "step": 2},
           {"kind": "scalars", "step": 3, key: 0.0}, {"kind": "scalars", "step": 4, key: float("nan")},
           {"kind": "scalars", "step": 5, key: 0.02}, {"kind": "scalars", key: 0.5}]  # the last: no step
    make_run(tmp_path, "mgpp", "mgpp", 1, 0.6, records=one)
    make_run(tmp_path, "dense", "dense", 1, 0.7, records=[{"kind": "scalars", "step": 5, key: 0.3}])
    run = next(r for r in find_runs([tmp_path]) if r.get("method.name") == "mgpp")
    assert run.scalars(key) == ([3, 5], [0.0, 0.02])  # a 0.0 is a value; the log-scale figure leaves it out
    groups = _labelled_groups(find_runs([tmp_path]), [])
    fig = draw_figure2b(groups)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["mgpp: smallest kept |θ| (one logged point, step 5)"]
    line = ax.lines[0]
    assert list(line.get_xdata()) == [5] and list(line.get_ydata()) == [0.02]
    assert line.get_marker() not in (None, "None")
    assert "each run logged one prune" in ax.get_title() and ax.get_xlim()[0] == 0
    plt.close(fig)

    # three points: a marker on each, even for a style without one; no note
    three = [{"kind": "scalars", "step": s, key: v} for s, v in ((10, 0.0), (20, 0.01), (30, 0.02), (40, 0.03))]
    make_run(tmp_path / "more", "l2", "l2", 1, 0.6, records=three)
    groups = _labelled_groups(find_runs([tmp_path / "more"]), [])
    fig = draw_figure2b(groups, styles={"l2": {"color": "k", "ls": "-", "marker": None}})
    line = fig.axes[0].lines[0]
    assert list(line.get_ydata()) == [0.01, 0.02, 0.03] and all(y > 0 for y in line.get_ydata())
    assert line.get_marker() == "o" and line.get_markevery() == 1 and "one prune" not in fig.axes[0].get_title()
    plt.close(fig)
    assert not math.isnan(sum(line.get_ydata()))


@pytest.mark.parametrize("value", [None, float("nan")])
def test_the_kept_weights_table_and_dev_curves_tolerate_unlogged_values(tmp_path, value):
    from mgpp.report.figures import figure_dev_curves

    records = [{"kind": "scalars", "step": 10, "eval_accuracy": value}, {"kind": "scalars", "step": 20,
                                                                         "eval_accuracy": 0.6}, log10_histogram(20)]
    make_run(tmp_path, "a", "mgpp", 1, 0.6, records=records)
    runs = find_runs([tmp_path])
    assert runs[0].scalars("eval/accuracy") == ([20], [0.6])
    assert figure_dev_curves(_labelled_groups(runs, []), tmp_path / "dev.png", "eval_accuracy") is not None


def test_figure2b_draws_every_seed_with_one_legend_entry(tmp_path):
    import matplotlib.pyplot as plt

    from mgpp.report.figures import draw_figure2b

    key = "pruning/kept_min_magnitude"
    for seed in (1, 2, 3):
        records = [{"kind": "scalars", "step": s, key: 0.01 * s * seed} for s in (10, 20, 30)]
        make_run(tmp_path, f"mgpp{seed}", "mgpp", seed, 0.6, records=records)
    fig = draw_figure2b(_labelled_groups(find_runs([tmp_path]), []))
    lines = fig.axes[0].lines
    assert len(lines) == 3 and [l.get_label() for l in lines].count("_nolegend_") == 2
    assert lines[0].get_label() == "mgpp: smallest kept |θ| (seeds 1, 2, 3)"
    assert sorted(l.get_ydata()[-1] for l in lines) == pytest.approx([0.3, 0.6, 0.9])
    assert len({l.get_color() for l in lines}) == 1  # one method, one colour
    plt.close(fig)
