"""`natscale eval compare`: each run against the first, question by question (the paired
difference, its interval, the sign test) and the chart."""

from __future__ import annotations

import json
import shutil
from math import comb

import pytest

from natscale.cli.main import main
from natscale.eval.errors import EvalError
from natscale.eval.paired import paired_difference, sign_test

from .conftest import DATA, read_jsonl, scripted_fields, write_config

LIMIT = 20


def test_sign_test_is_the_exact_binomial_two_sided_test():
    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(2, 8) == sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert sign_test(30, 10) == pytest.approx(2 * sum(comb(40, k) for k in range(11)) / 2**40)


def test_a_tiny_p_value_is_kept_in_significant_digits():
    """244 better and 441 worse: p = 4.7e-14 was rounded to 6 decimals and shown as 0."""
    base = {str(i): ("q", 0.5) for i in range(685)}
    other = {str(i): ("q", 1.0 if i < 244 else 0.0) for i in range(685)}
    p = paired_difference(base, other, bootstrap=0)["p_sign_test"]
    assert p == pytest.approx(sign_test(244, 441), rel=1e-5) and 1e-14 < p < 1e-13


def test_paired_difference_over_the_shared_questions():
    base = {f"q{i}": (f"question {i}", float(i % 2)) for i in range(10)}  # 5 right
    other = {f"q{i}": (f"question {i}", 1.0) for i in range(1, 12)}  # all right, q0 missing
    d = paired_difference(base, other, bootstrap=500)
    assert d["questions"] == 9 and d["better"] == 4 and d["worse"] == 0
    assert d["value"] == pytest.approx(4 / 9)
    lo, hi = d["ci95"]
    assert 0 < lo <= d["value"] <= hi <= 1
    assert d["p_sign_test"] == pytest.approx(2 / 16)
    same = paired_difference(base, base)
    assert same["value"] == 0 and same["ci95"] == [0, 0] and same["p_sign_test"] == 1.0
    clash = {"q3": ("another question", 1.0)}
    with pytest.raises(EvalError, match=r"question 'q3' is 'question 3' in a but .* in b"):
        paired_difference(base, clash, names=("a", "b"))


def _eval(tmp_path, capsys, name: str, trajectories) -> None:
    fields = scripted_fields(tmp_path / name, limit=LIMIT, bootstrap=200)
    fields["scripted"] = {"trajectories": [str(trajectories)]}
    cfg = write_config(tmp_path / f"{name}.yaml", **fields)
    assert main(["eval", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()


def test_compare_two_agents_question_by_question_with_a_chart(tmp_path, capsys):
    """Two real evals of the same questions: the bundled trajectories replayed, and the same with
    each question's trajectories in reverse order (another first answer where there are
    several): the table's difference is the per-question one, and the chart is written."""
    bundled = json.loads((DATA / "trajectories.json").read_text())
    groups: dict[str, list] = {}
    for t in bundled:
        groups.setdefault(t["id"], []).append(t)
    reordered = tmp_path / "reordered.json"
    reordered.write_text(json.dumps([t for g in groups.values() for t in reversed(g)]))
    _eval(tmp_path, capsys, "a", DATA / "trajectories.json")
    _eval(tmp_path, capsys, "b", reordered)

    first = {e["id"]: e["info"]["reward"] for e in read_jsonl(tmp_path / "a" / "episodes.jsonl")}
    second = {e["id"]: e["info"]["reward"] for e in read_jsonl(tmp_path / "b" / "episodes.jsonl")}
    better = sum(second[q] and not first[q] for q in first)
    worse = sum(first[q] and not second[q] for q in first)
    assert worse > 0  # the data has questions whose later trajectory failed

    png = tmp_path / "charts" / "compare.png"
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(["eval", "compare", *runs, "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    header, _, row_a, row_b = captured.out.strip().splitlines()
    assert "accuracy vs first, paired [95% CI] on N questions | better / worse | p |" in header
    assert "| (baseline) |" in row_a
    delta = 100 * (better - worse) / LIMIT
    assert f"| {delta:+.1f} [" in row_b and f"] on {LIMIT} | {better} / {worse} |" in row_b
    assert f"| {sign_test(better, worse):.2g} |" in row_b
    assert png.read_bytes().startswith(b"\x89PNG")
    assert captured.err.strip() == f"natscale eval compare: 2 evaluations; chart {png}"
    # a summary.json without its episodes cannot be paired; one run alone is just drawn
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "b" / "summary.json", alone / "summary.json")
    assert main(["eval", "compare", runs[0], str(alone), "--plot", str(png)]) == 0
    assert "| n/a |  |  |" in capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["eval", "compare", runs[0], "--plot", str(tmp_path / "one.png")]) == 0
    assert "vs first" not in capsys.readouterr().out and (tmp_path / "one.png").is_file()
    # a PNG of the user's at that path is never replaced
    mine = tmp_path / "mine.png"
    shutil.copy(tmp_path / "one.png", mine)
    from PIL import Image

    Image.open(mine).save(mine)  # the same picture, saved without natscale's mark
    before = mine.read_bytes()
    assert main(["eval", "compare", runs[0], "--plot", str(mine)]) == 2
    assert "natscale eval compare did not write it" in capsys.readouterr().err
    assert mine.read_bytes() == before


def test_compare_refuses_a_plot_that_is_not_a_png_and_plot_without_compare(tmp_path, capsys):
    assert main(["eval", "compare", str(tmp_path), "--plot", str(tmp_path / "c.svg")]) == 2
    assert "the chart is a PNG" in capsys.readouterr().err
    cfg = write_config(tmp_path / "e.yaml", **scripted_fields(tmp_path / "out"))
    assert main(["eval", str(cfg), "--plot", str(tmp_path / "c.png")]) == 2
    assert "--plot is for `natscale eval compare RUN...`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_paired_difference_covers_the_questions_the_summary_scored(tmp_path, capsys):
    """A resume with a lower `limit` scores the first 10 questions, but episodes.jsonl still holds
    20: the paired column was over all 20, beside a summary of 10."""
    _eval(tmp_path, capsys, "a", DATA / "trajectories.json")
    _eval(tmp_path, capsys, "b", DATA / "trajectories.json")
    cfg = tmp_path / "b.yaml"
    assert main(["eval", str(cfg), "--resume", "--set", "limit=10", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["questions"] == 10 and len(summary["question_ids"]) == 10
    assert len(read_jsonl(tmp_path / "b" / "episodes.jsonl")) == LIMIT
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    row_b = capsys.readouterr().out.strip().splitlines()[-1]
    assert "] on 10 |" in row_b, row_b
    # a summary written before natscale recorded its questions: every episode counts, as before
    del summary["question_ids"]
    (tmp_path / "b" / "summary.json").write_text(json.dumps(summary))
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert f"on {LIMIT} |" in capsys.readouterr().out.strip().splitlines()[-1]
