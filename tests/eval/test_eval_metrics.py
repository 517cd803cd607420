"""summary.json's numbers against hand-computed values: pass@k, EM vs F1, the 95% interval."""

from __future__ import annotations

import json

import pytest

from natscale.eval.metrics import pass_at_k, summarize


def test_pass_at_k_is_the_unbiased_estimator():
    # 1 - C(n - c, k) / C(n, k) (Chen et al. 2021), not 1 - (1 - c / n) ** k
    assert pass_at_k(3, 1, 2) == pytest.approx(2 / 3)
    assert pass_at_k(5, 2, 3) == pytest.approx(9 / 10)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k wrong samples: some draw of k is right


def _rec(qid: str, reward: bool, f1: float) -> dict:
    return {"id": qid, "info": {"reward": reward, "f1": f1, "finished": True, "turns": 2}}


def test_qa_reports_em_and_f1_separately():
    records = [_rec("a", False, 0.5), _rec("b", True, 1.0), _rec("c", False, 0.0)]
    m = summarize(records, "qa", bootstrap=0)["metrics"]
    assert m["em"] == {"value": pytest.approx(1 / 3), "ci95": None}
    assert m["f1"] == {"value": pytest.approx(0.5), "ci95": None}


def test_interval_is_the_95_percent_bootstrap_of_questions():
    # 200 questions, half right: the 95% interval is about +-1.96 * sqrt(p (1 - p) / n)
    records = [_rec(f"q{i:03d}", i % 2 == 0, 0.0) for i in range(200)]
    summary = summarize(records, "math", bootstrap=2000, seed=0)
    lo, hi = summary["metrics"]["accuracy"]["ci95"]
    half = 1.96 * (0.25 / 200) ** 0.5  # 0.069; bootstrap means step by 1/200
    assert lo == pytest.approx(0.5 - half, abs=0.006) and hi == pytest.approx(0.5 + half, abs=0.006)


def test_compare_table_cells(tmp_path):
    from natscale.eval.compare import compare

    summary = {
        "model": "m",
        "marker": "success",
        "episodes": 40,
        "finished": 37,
        "metrics": {"accuracy": {"value": 0.625, "ci95": [0.5, 0.75]}},
        "throughput": {"episodes_per_s": 2.5, "episodes_this_run": 40},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table, line = compare([str(tmp_path)])
    header, _, row = table.splitlines()
    assert header == "| run | model | marker | episodes | accuracy | unfinished | episodes/s |"
    assert row == f"| {tmp_path} | m | success | 40 | 62.5 [50.0, 75.0] | 3 | 2.5 |"
    assert line == "natscale eval compare: 1 evaluation"
