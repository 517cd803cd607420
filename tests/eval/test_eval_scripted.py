"""The whole eval loop with the scripted backend (the bundled teacher replayed)."""

from __future__ import annotations

import json

import pytest

from natscale.cli.main import main
from natscale.config.eval import EvalConfig
from natscale.eval.errors import EvalError
from natscale.eval.run import run_eval

from .conftest import DATA, bundled_by_id, read_jsonl, scripted_fields, write_config


def test_replay_reproduces_the_bundled_conversations_and_rewards(tmp_path, capsys):
    cfg = write_config(tmp_path / "eval.yaml", **scripted_fields(tmp_path / "run"))
    assert main(["eval", str(cfg), "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("natscale eval: math accuracy") and "turn_limit" in line
    episodes = read_jsonl(tmp_path / "run" / "episodes.jsonl")
    bundled = bundled_by_id()
    assert len(episodes) == len(bundled) == 1300
    for ep in episodes:
        want = bundled[ep["id"]][0]
        assert ep["conversations"] == want["conversations"], ep["id"]
        assert ep["info"]["reward"] == want["info"]["reward"]
        assert ep["info"]["pred"] == want["info"]["pred"]
        assert ep["info"]["finished"] == want["info"]["finished"]
        assert (ep["info"]["failure"] == "turn_limit") == (want["info"]["kind"] == "unfinished")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rewards = [v[0]["info"]["reward"] for v in bundled.values()]
    assert summary["metrics"]["accuracy"]["value"] == pytest.approx(sum(rewards) / len(rewards))
    lo, hi = summary["metrics"]["accuracy"]["ci95"]
    assert lo < summary["metrics"]["accuracy"]["value"] < hi
    assert summary["failures"]["turn_limit"] == sum(
        v[0]["info"]["kind"] == "unfinished" for v in bundled.values()
    )
    assert summary["complete"] and summary["backend"] == "scripted"
    assert {"natscale", "python"} <= set(summary["versions"])


def test_n_samples_give_pass_at_k(tmp_path):
    fields = scripted_fields(tmp_path / "run", limit=200)
    fields["sampling"] = {"n": 3}
    summary = run_eval(EvalConfig.model_validate(fields))
    bundled = bundled_by_id()
    episodes = read_jsonl(tmp_path / "run" / "episodes.jsonl")
    assert len(episodes) == 600
    for ep in episodes:
        trajs = bundled[ep["id"]]
        assert ep["info"]["reward"] == trajs[ep["sample"] % len(trajs)]["info"]["reward"]
    m = summary["metrics"]
    assert set(m) == {"accuracy", "pass@1", "pass@2", "pass@3"}
    assert m["pass@1"]["value"] == pytest.approx(m["accuracy"]["value"])
    assert m["pass@1"]["value"] <= m["pass@2"]["value"] <= m["pass@3"]["value"]


def test_stop_then_resume_completes_the_same_episodes(tmp_path):
    cfg = EvalConfig.model_validate(scripted_fields(tmp_path / "run", limit=300))
    path = tmp_path / "run" / "episodes.jsonl"

    def stop_after_some() -> bool:  # "SIGTERM" once the first episodes are written
        return path.exists() and path.stat().st_size > 0

    partial = run_eval(cfg, should_stop=stop_after_some)
    assert 0 < partial["episodes"] < 300 and not partial["complete"]
    with path.open("a") as fh:  # a line cut short by a kill
        fh.write('{"id": "math-00299", "sample": 0, "quest')
    with pytest.raises(EvalError, match="pass --resume"):
        run_eval(cfg)
    full = run_eval(cfg, resume=True)
    assert full["complete"] and full["episodes"] == 300
    episodes = read_jsonl(path)
    assert len(episodes) == 300 and len({e["id"] for e in episodes}) == 300
    assert full["throughput"]["episodes_this_run"] == 300 - partial["episodes"]


def test_resume_refuses_another_evals_output(tmp_path):
    run_eval(EvalConfig.model_validate(scripted_fields(tmp_path / "run", limit=20)))
    other = EvalConfig.model_validate(
        scripted_fields(tmp_path / "run", limit=20, prompt={"marker": "failure"})
    )
    with pytest.raises(EvalError, match="another eval's episodes"):
        run_eval(other, resume=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "episodes.jsonl").write_text("{}\n")
    with pytest.raises(EvalError, match=r"no readable run\.json"):
        run_eval(EvalConfig.model_validate(scripted_fields(foreign, limit=20)), resume=True)
    assert (foreign / "episodes.jsonl").read_text() == "{}\n"  # nothing touched


def test_marker_choice_is_recorded_and_changes_the_prompt(tmp_path, tokenizer_dir=None):
    from natscale.config.eval import PromptConfig
    from natscale.eval.prompting import Prompter

    ok = Prompter(PromptConfig(file=str(DATA / "prompt.json")), None)
    bad = Prompter(PromptConfig(file=str(DATA / "prompt.json"), marker="failure"), None)
    q_ok = ok.messages("What is 2 + 2?", [])[-1].content
    q_bad = bad.messages("What is 2 + 2?", [])[-1].content
    assert q_ok.endswith("solve the problem correctly.") and q_bad.endswith(
        "incorrectly solve the problem."
    )
    with pytest.raises(EvalError, match="unknown class 'great'"):
        Prompter(PromptConfig(marker="great"), None)
    with pytest.raises(EvalError, match="class index 2 out of range"):
        Prompter(PromptConfig(marker=2), None)
    # the file's acknowledgement (here not the paper's) unless the config gives its own
    prompt = json.loads((DATA / "prompt.json").read_text())
    (tmp_path / "prompt.json").write_text(json.dumps({**prompt, "acknowledgement": "Got it."}))
    from_file = Prompter(PromptConfig(file=str(tmp_path / "prompt.json")), None)
    assert from_file.messages("Q?", [])[1].content == "Got it."
    own = Prompter(PromptConfig(file=str(tmp_path / "prompt.json"), acknowledgement="Fine."), None)
    assert own.messages("Q?", [])[1].content == "Fine."


def test_compare_prints_one_markdown_table(tmp_path, capsys):
    for name, marker in (("a", "success"), ("b", "failure")):
        run_eval(
            EvalConfig.model_validate(
                scripted_fields(tmp_path / name, limit=50, prompt={"marker": marker})
            )
        )
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| run | model | marker | episodes | accuracy")
    assert len(table) == 4 and "| success |" in table[2] and "| failure |" in table[3]
    assert main(["eval", "compare", str(tmp_path / "missing")]) == 2


def test_resume_counts_rank_files_of_a_killed_data_parallel_run(tmp_path):
    cfg = EvalConfig.model_validate(scripted_fields(tmp_path / "run", limit=60))
    run_eval(cfg)
    out = tmp_path / "run"
    lines = (out / "episodes.jsonl").read_text().splitlines(keepends=True)
    (out / "episodes.jsonl").write_text("".join(lines[:20]))
    (out / "episodes.rank0.jsonl").write_text("".join(lines[20:35]))
    (out / "episodes.rank1.jsonl").write_text("".join(lines[10:40]) + '{"id": "cut')
    summary = run_eval(cfg, resume=True)
    assert summary["complete"] and summary["throughput"]["episodes_this_run"] == 20
    assert sorted(p.name for p in out.iterdir()) == ["episodes.jsonl", "run.json", "summary.json"]
    episodes = read_jsonl(out / "episodes.jsonl")
    assert len(episodes) == 60 and len({e["id"] for e in episodes}) == 60
