"""SQuAD: the official metric on hand cases, the article split, and the QA path end to end."""

import json

import pytest

from mgpp.tasks.data import find_data_dir
from mgpp.tasks.squad import exact_match, f1, normalize_answer, read_squad_json, split_by_article, squad_metrics

from test_train import QUICK, run_train

SQUAD = find_data_dir("squad")


def test_normalization_matches_the_official_script():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
    assert normalize_answer("  Denver Broncos ") == "denver broncos"


def test_exact_match_and_f1_hand_cases():
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    # "denver" vs "denver broncos": precision 1, recall 1/2 -> F1 2/3
    assert f1("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    assert f1("", "Denver Broncos") == 0.0  # empty prediction scores zero
    assert f1("Carolina Panthers", "Denver Broncos") == 0.0


def test_multiple_gold_answers_take_the_best():
    golds = {"q1": ["Denver Broncos", "the Broncos", "Broncos"], "q2": ["Santa Clara, California"]}
    predictions = {"q1": "Broncos", "q2": "Santa Clara"}
    got = squad_metrics(predictions, golds)
    assert got["exact_match"] == pytest.approx(50.0)  # q1 exact, q2 not
    # q1 F1 = 1; q2: "santa clara" vs "santa clara california": P 1, R 2/3 -> 0.8
    assert got["f1"] == pytest.approx(100 * (1.0 + 0.8) / 2)
    assert squad_metrics({}, golds) == {"exact_match": 0.0, "f1": 0.0}  # missing predictions count as empty


def test_read_and_split_by_article(tmp_path):
    data = {"data": [{"title": f"T{i}", "paragraphs": [{"context": "abc def", "qas": [
        {"id": f"{i}-{j}", "question": "q?", "answers": [{"text": "def", "answer_start": 4}]} for j in range(3)]}]}
        for i in range(8)]}
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(data))
    ds = read_squad_json(path)
    assert len(ds) == 24 and ds[0]["answers"] == {"text": ["def"], "answer_start": [4]}
    train, evaluation = split_by_article(ds, 0.25, seed=0)
    assert len(evaluation) == 6 and len(train) == 18
    assert not set(train["title"]) & set(evaluation["title"])


@pytest.mark.skipif(SQUAD is None, reason="no local SQuAD dev file (../shared/data/squad)")
def test_squad_end_to_end_on_tiny_deberta(tmp_path):
    run_train(*QUICK, "model=tiny_deberta", "task=squad_dev_split", "method=mgpp", "sparsity=0.8",
              "logger=[jsonl]", "max_train_samples=128", "max_eval_samples=40", "trainer.max_steps=16",
              "trainer.eval_steps=8", "report.histogram_every=0", f"hydra.run.dir={tmp_path}")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_exact_match"] <= 100.0 and 0.0 <= metrics["eval_f1"] <= 100.0
    assert metrics["sparsity"] == pytest.approx(0.8, abs=1e-4)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any("eval/f1" in r for r in records if r["kind"] == "scalars" and r["step"] == 8)
