"""The report's statistics on synthetic predictions with known answers: the paired bootstrap over
seeds and examples, Holm's adjustment, the headroom share, and the per-example table end to end."""

import math

import numpy as np
import pytest

from mgpp.report.paired import Scores, holm, paired_bootstrap, student_t_p


def scores(correct: np.ndarray, labels: np.ndarray | None = None) -> Scores:
    """Binary predictions that are right exactly where ``correct`` says."""
    labels = np.zeros(len(correct), dtype=int) if labels is None else labels
    return Scores(np.arange(len(correct)), labels, np.where(correct, labels, 1 - labels))


def test_identical_predictions_differ_by_nothing():
    rng = np.random.default_rng(1)
    runs = [scores(rng.random(300) < 0.8) for _ in range(3)]
    result = paired_bootstrap(runs, runs, replicates=500)
    assert result.estimate == 0 and result.low == 0 and result.high == 0 and result.p == 1.0


def test_a_large_difference_is_resolved_and_estimated_exactly():
    rng = np.random.default_rng(2)
    a = [scores(np.ones(1000, bool)) for _ in range(3)]
    b = [scores(rng.random(1000) < 0.5) for _ in range(3)]
    truth = np.mean([1 - s.prediction.__eq__(s.label).mean() for s in b])  # 1 - B's accuracy, per seed, averaged
    result = paired_bootstrap(a, b, replicates=1000)
    assert result.estimate == pytest.approx(truth) and result.low < truth < result.high
    assert result.p == pytest.approx(1 / 1001) and (result.seeds, result.examples) == (3, 1000)


def test_one_seed_interval_matches_the_paired_binomial_standard_error():
    """With one seed only the examples vary: the bootstrap's spread is the textbook paired one,
    sqrt((p10 + p01 - (p10 - p01)^2) / n) for discordant shares p10, p01."""
    rng = np.random.default_rng(3)
    n = 2000
    ca, cb = rng.random(n) < 0.75, rng.random(n) < 0.70
    result = paired_bootstrap([scores(ca)], [scores(cb)], replicates=4000)
    p10, p01 = np.mean(ca & ~cb), np.mean(~ca & cb)
    se = math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)
    assert (result.high - result.low) / (2 * 1.96) == pytest.approx(se, rel=0.1)


def test_seeds_that_disagree_widen_the_interval_beyond_the_examples_alone():
    """Two seeds where A wins by 10 points and one where it loses by 10: the seed spread must show."""
    rng = np.random.default_rng(4)
    n = 400
    base = rng.random(n) < 0.7
    a, b = [], []
    for shift in (+40, +40, -40):  # 40 of 400 examples flipped: 10 points
        other = base.copy()
        flip = rng.choice(np.flatnonzero(base if shift > 0 else ~base), abs(shift), replace=False)
        other[flip] = ~other[flip]
        a.append(scores(base))
        b.append(scores(other))
    across = paired_bootstrap(a, b, replicates=2000)
    alone = paired_bootstrap(a[:1], b[:1], replicates=2000)
    assert across.estimate == pytest.approx(0.1 / 3, abs=1e-9)
    assert across.low < 0 < across.high and across.p > 0.2  # unresolved, as three disagreeing seeds should be
    assert alone.p < 0.001  # one seed alone (examples only) looks decisive


def test_under_the_null_p_values_are_not_too_small():
    """A and B drawn alike: about 5% of p-values fall below 0.05 (not many more)."""
    rng = np.random.default_rng(5)
    small = 0
    trials = 60
    for _ in range(trials):
        a = [scores(rng.random(200) < 0.7) for _ in range(3)]
        b = [scores(rng.random(200) < 0.7) for _ in range(3)]
        small += paired_bootstrap(a, b, replicates=400, seed=int(rng.integers(1 << 30))).p < 0.05
    assert small / trials <= 0.15


def test_f1_is_recomputed_on_the_resampled_examples():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0] * 50)
    perfect = Scores(np.arange(400), labels, labels.copy())
    always_one = Scores(np.arange(400), labels, np.ones(400, int))
    result = paired_bootstrap([perfect], [always_one], "f1", replicates=500)
    assert result.estimate == pytest.approx(1 - 2 * 0.5 / 1.5)  # always 1: precision 0.5, recall 1 -> F1 2/3


def test_runs_of_other_examples_are_refused():
    a = Scores(np.arange(10), np.zeros(10), np.zeros(10))
    b = Scores(np.arange(1, 11), np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="different examples"):
        paired_bootstrap([a], [b])


def test_holm_adjusts_as_the_textbook_does():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan, 0.01])[2] == pytest.approx(0.02) and math.isnan(holm([math.nan])[0])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0]) and holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])
    assert student_t_p([1.0, 1.2, 0.8]) < 0.05 and math.isnan(student_t_p([1.0]))


def test_the_report_prints_per_example_differences_with_holm_and_headroom(tmp_path):
    """Synthetic runs with predictions: MGPP right on 80% of 200 examples, GMP on 70% (its misses a
    superset of MGPP's), dense on 90% (and a weaker dense recipe on 85%: the headroom takes the strongest),
    the commonest label 60%: MGPP - GMP = +10 points, 1/3 of the headroom (90 - 60); every p-value gets a
    Holm-adjusted one, never smaller."""
    import csv
    import json

    import yaml

    from mgpp.predictions import predictions_path, write_predictions
    from mgpp.report.__main__ import main as report_main

    n = 200
    labels = np.array([1] * 120 + [0] * 80)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    for method, right, sparsity, lr in (("mgpp", 160, 0.9, 1e-4), ("gmp", 140, 0.9, 1e-4), ("dense", 180, 0.0, 1e-4),
                                        ("dense", 170, 0.0, 2e-5)):
        for seed in (1, 2, 3):
            run = tmp_path / f"{method}{lr}" / f"seed{seed}"
            run.mkdir(parents=True)
            config = {"experiment_name": "synthetic", "seed": seed, "sparsity": sparsity, "method": {"name": method},
                      "trainer": {"learning_rate": lr},
                      "task": {"name": "mrpc", "metrics": ["accuracy", "f1"], "eval_splits": ["validation"]}}
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            correct = np.zeros(n, bool)
            correct[order[:right]] = True
            predictions = np.where(correct, labels, 1 - labels)
            (run / "metrics.json").write_text(json.dumps({"eval_accuracy": right / n, "eval_f1": 0.5,
                                                          "sparsity": sparsity}))
            write_predictions(predictions_path(run, "validation", 30), np.arange(n), labels, predictions)
    assert report_main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-figures", "--compare", "gmp",
                        "--replicates", "500"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| mrpc | validation | 90% | mgpp − gmp") and
               "| accuracy |" in line)
    assert "+10.0 [" in row and "+33% of 30.0" in row and "| 3 × 200 |" in row
    rows = list(csv.DictReader(open(tmp_path / "out" / "comparisons.csv")))
    assert {r["kind"] for r in rows} == {"seed-paired", "per-example bootstrap"}
    for r in rows:
        if r["p"]:
            assert float(r["p_holm"]) >= float(r["p"])
    example = next(r for r in rows if r["kind"] == "per-example bootstrap" and r["metric"] == "accuracy")
    assert float(example["estimate"]) == pytest.approx(10.0) and float(example["share_of_headroom"]) == pytest.approx(1 / 3)
