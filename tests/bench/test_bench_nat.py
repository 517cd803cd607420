"""`natscale bench nat`: the data every strategy sees, the report, the work folder, and the
`--quick` smoke run of the whole pipeline (prepare -> train -> eval -> record), resumed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from natscale.bench.nat import report
from natscale.bench.nat.behaviour import BEHAVIOURS
from natscale.bench.nat.data import build_pool, prepare_config
from natscale.bench.nat.presets import FINE_KINDS, PRESETS, QUICK, variant
from natscale.bench.nat.runner import WorkDirError, claim_work_dir, plan, train_config

REPO = Path(__file__).resolve().parents[2]
SMALL = replace(QUICK, positives=(10, 20), pool_questions=80, test_questions=30)


def _prepared(tmp_path: Path, p: int, strategy: str):
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    cfg = PrepareConfig.model_validate(prepare_config(SMALL, tmp_path, p, strategy))
    return prepare(cfg, tmp_path / f"P{p}" / strategy, progress=False)


def test_pool_subsets_are_nested_and_disjoint_from_the_test_questions(tmp_path: Path):
    summary = build_pool(SMALL, tmp_path)
    small = json.loads((tmp_path / "P10" / "trajectories.json").read_text())
    large = json.loads((tmp_path / "P20" / "trajectories.json").read_text())
    ids = [(t["id"], t["source"]) for t in large]
    assert all((t["id"], t["source"]) in ids for t in small)  # nested
    assert sum(t["info"]["reward"] for t in small) == 10
    assert sum(not t["info"]["reward"] for t in small) == 20  # 2P failures
    train = {json.loads(x)["question"] for x in (tmp_path / "questions.jsonl").open()}
    test = [json.loads(x) for x in (tmp_path / "test.jsonl").open()]
    assert len(test) == 30 and not train & {q["question"] for q in test}
    assert summary["subsets"]["P20"]["positives"] == 20
    # the calibration's subset: every success of the pool, no failure
    every = json.loads((tmp_path / "Pall" / "trajectories.json").read_text())
    assert all(t["info"]["reward"] for t in every)
    assert len(every) == summary["pool_successes"] == summary["subsets"]["Pall"]["positives"]
    # the same bytes again: a rerun builds the same benchmark
    again = tmp_path / "again"
    build_pool(SMALL, again)
    assert (again / "P20" / "trajectories.json").read_bytes() == (
        tmp_path / "P20" / "trajectories.json"
    ).read_bytes()


def test_every_strategy_sees_the_same_trajectories(tmp_path: Path):
    build_pool(SMALL, tmp_path)
    stats = {s: _prepared(tmp_path, 10, s).stats for s in ("vanilla", "nut", "nat", "nat-fine")}
    kept = {s: {k: v["examples"] for k, v in st["per_class"].items()} for s, st in stats.items()}
    assert kept["vanilla"] == {"success": 10}
    assert sum(kept["nut"].values()) == sum(kept["nat"].values()) == 30
    assert kept["nat"] == {"success": 10, "failure": 20}
    # nat-fine: one bucket per outcome kind, and the buckets add up to the same 30 trajectories
    assert list(kept["nat-fine"]) == list(FINE_KINDS)
    assert kept["nat-fine"]["success"] == 10 and sum(kept["nat-fine"].values()) == 30
    kinds = json.loads((tmp_path / "pool.json").read_text())["subsets"]["P10"]["kinds"]
    assert kept["nat-fine"] == kinds


def test_interval_is_t_over_seeds_or_the_single_runs_bootstrap():
    lo, hi = report.interval([0.5, 0.6, 0.7])
    half = 4.303 * 0.1 / math.sqrt(3)
    assert lo == pytest.approx(0.6 - half) and hi == pytest.approx(0.6 + half)
    assert report.interval([0.4], [0.3, 0.5]) == [0.3, 0.5]
    assert report.interval([0.0, 0.0]) == [0.0, 0.0]


def _result(p, strategy, seed, acc, failure_acc=None):
    metrics = {"accuracy": acc, "ci95": [acc, acc], "episodes": 10, "finished": 9}
    out = {"p": p, "strategy": strategy, "seed": seed, "success_marker": metrics}
    if failure_acc is not None:
        out["failure_marker"] = {**metrics, "accuracy": failure_acc, "marker": "failure"}
    return out


def test_report_table_and_chart(tmp_path: Path):
    preset = replace(QUICK, positives=(24,), seeds=(0, 1))
    results = [
        _result(24, s, seed, 0.1 * (i + 1) + 0.01 * seed, 0.0 if s == "nat" else None)
        for i, s in enumerate(preset.strategies)
        for seed in preset.seeds
    ]
    rows = report.aggregate(preset, results)
    nat = next(r for r in rows if r["strategy"] == "nat" and r["marker"] == "success")
    assert nat["accuracy"] == pytest.approx(0.305) and nat["per_seed"] == pytest.approx([0.3, 0.31])
    text = report.markdown(preset, rows, "# t")
    assert "| nat | **30.5** [" in text and "(30.0, 31.0)" in text
    assert "| nat | 24 | failure | 0.0 |" in text
    assert "What the agents do" not in text  # results without behaviours (older records)
    png = report.plot(preset, rows, tmp_path / "c.png", "t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    for r in results:  # the behaviours: their mean over seeds, one row per strategy and marker
        acc = r["success_marker"]["accuracy"]
        r["success_marker"]["behaviour"] = {"correct": acc, "wrong_operation": 1 - acc}
        if "failure_marker" in r:
            r["failure_marker"]["behaviour"] = {"unfinished": 1.0}
    rows = report.aggregate(preset, results)
    nat = next(r for r in rows if r["strategy"] == "nat" and r["marker"] == "success")
    assert nat["behaviour"] == pytest.approx({"correct": 0.305, "wrong_operation": 0.695})
    text = report.markdown(preset, rows, "# t")
    assert "| strategy | P | marker | correct | unfinished | wrong operation |" in text
    assert "| nat | 24 | success | 30.5 | 0.0 | 69.5 |" in text
    assert "| nat | 24 | failure | 0.0 | 100.0 | 0.0 |" in text
    assert "Against vanilla" not in text  # results without per-question rewards


def test_each_strategy_against_vanilla_question_by_question():
    preset = replace(QUICK, positives=(24,), seeds=(0, 1))
    right = {  # per strategy and seed: the test questions answered right, of q0..q9
        "vanilla": ({0, 1, 2}, {0, 1, 2, 3}),
        "nut": ({0, 1, 2}, {0, 1, 2, 3}),
        "nat": ({0, 1, 2, 5, 6, 7, 8}, {1, 2, 3, 5, 6, 7, 8, 9}),
        "nat-fine": ({9}, set()),
    }
    results = []
    for strategy, per_seed in right.items():
        for seed, qs in enumerate(per_seed):
            r = _result(24, strategy, seed, len(qs) / 10)
            r["success_marker"]["rewards"] = {f"q{i}": float(i in qs) for i in range(10)}
            results.append(r)
    pairs = {r["strategy"]: r for r in report.paired(preset, results)}
    assert set(pairs) == {"nut", "nat", "nat-fine"}
    assert pairs["nut"]["value"] == 0 and pairs["nut"]["p_sign_test"] == 1.0
    # nat: q0 right in one seed of two (vanilla: both), q1-q3 as vanilla, q5-q8 right where
    # vanilla never is, q9 in one seed of two
    nat = pairs["nat"]
    assert nat["value"] == pytest.approx((-0.5 + 4 * 1.0 + 0.5) / 10)
    assert (nat["better"], nat["worse"], nat["questions"], nat["seeds"]) == (5, 1, 10, [0, 1])
    assert pairs["nat-fine"]["better"] == 1 and pairs["nat-fine"]["worse"] == 4
    text = report.markdown(preset, report.aggregate(preset, results), "# t", list(pairs.values()))
    assert "| strategy | P | difference, points [95% CI] | better / worse questions | p |" in text
    assert "| nat | 24 | **+40.0** [" in text and "| 5 / 1 of 10 | 0.22 |" in text


def test_calibration_verdict_places_vanilla_against_the_band():
    from natscale.bench.nat.data import ALL, BASE

    scarce = replace(QUICK, positives=(10, 30), calibration="positives", seeds=(0, 1, 2))
    rows = report.aggregate(
        scarce,
        [_result(BASE, "vanilla", 0, 0.45)]
        + [
            _result(p, "vanilla", seed, acc)
            for p, acc in ((10, 0.2), (30, 0.6))
            for seed in (0, 1, 2)
        ],
    )
    assert report.calibration_verdict(scarce, rows) == (
        "vanilla at P = 30: 60.0% over 3 seed(s), inside the protocol's 40%-80% band"
    )  # the largest P decides; P = 10 may fall below
    every = replace(QUICK, seeds=(0,))
    high = report.aggregate(every, [_result(ALL, "vanilla", 0, 0.844)])
    assert report.calibration_verdict(every, high).endswith(
        "84.4% over 1 seed(s), above the protocol's 40%-80% band"
    )
    assert report.calibration_verdict(scarce, high) is None  # no run at the deciding P


def _episode(actions, observations, reward=False, finished=True, failure=None):
    turns = []
    for action, observation in zip(actions, observations, strict=True):
        turns.append({"role": "assistant", "content": f"Thought: t\nAction: {action}"})
        turns.append({"role": "user", "content": f"Observation: {observation}"})
    return {
        "answer": "It takes 1196/26=<<1196/26=46>>46 minutes.\n#### 46",
        "info": {"reward": reward, "finished": finished, "failure": failure},
        "conversations": turns,
    }


def _with_tool_calls(episode: dict) -> dict:
    """``episode`` as an eval with native tool calls writes it (``messages``)."""
    from natscale.data.formats.writing import Notes
    from natscale.data.react_calls import tool_call_turns
    from natscale.data.trajectory import Trajectory, Turn
    from natscale.eval.episodes import openai_messages

    turns = [
        Turn("assistant" if t["role"] == "assistant" else "observation", t["content"])
        for t in episode["conversations"]
    ]
    native, _ = tool_call_turns(Trajectory("e", "q", turns), Notes())
    history, last = [], None
    for t in native:
        if t.role == "observation":
            history.append({"role": "tool", "tool_call_id": last, "content": t.content})
        else:
            last = t.tool_calls[0]["id"] if t.tool_calls else None
            history.append({"role": t.role, "content": t.content, "tool_calls": t.tool_calls})
    rest = {k: v for k, v in episode.items() if k != "conversations"}
    return {**rest, "messages": openai_messages([], history)}


def test_behaviour_of_an_episode_is_what_its_first_calculation_did(tmp_path: Path):
    from natscale.bench.nat.behaviour import behaviour, classify

    done = "Episode finished"
    cases = {
        "correct": _episode(["calculate[1196 / 26]", "finish[46]"], ["46", done], reward=True),
        "unparseable": _episode(["calculate[1196"], ["Error: no ]"], finished=False,
                                failure="unparseable_action"),
        "unfinished": _episode(["calculate[1196 / 26]"] * 7, ["46"] * 7, finished=False,
                               failure="turn_limit"),
        "tool_error": _episode(["calculate[1196 / 26 =]", "finish[1196]"],
                               ["Error: invalid syntax", done]),
        "no_calculation": _episode(["finish[40]"], [done]),
        "answer_slip": _episode(["calculate[1196 / 26]", "finish[64]"], ["46", done]),
        "wrong_operation": _episode(["calculate[1196 * 26]", "finish[31096]"], ["31096", done]),
        "wrong_numbers": _episode(["calculate[1169 / 26]", "finish[44]"], ["1169/26", done]),
    }  # fmt: skip
    assert {name: classify(e) for name, e in cases.items()} == {n: n for n in cases}
    # the same episodes with native tool calls (eval's loop.protocol: tool_calls records)
    native = {name: _with_tool_calls(e) for name, e in cases.items()}
    assert {name: classify(e) for name, e in native.items()} == {n: n for n in cases}
    no_gold = {**cases["wrong_operation"], "answer": "#### 46"}
    assert classify(no_gold) == "wrong_answer"
    path = tmp_path / "episodes.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in [*cases.values(), cases["correct"]]))
    shares = behaviour(path)
    assert shares["correct"] == pytest.approx(2 / 9) and sum(shares.values()) == pytest.approx(1)


@pytest.mark.parametrize("width_in", [3.8, 5.4, 7.0])
def test_long_chart_titles_are_wrapped_to_fit_the_figure(width_in: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long = "natscale bench nat --preset cpu-warm: 4-layer Llama (hidden 128), 150 steps, " * 3
    fig, ax = plt.subplots(figsize=(width_in, 3.6))
    title = ax.set_title(report.wrap_title(long, width_in), fontsize=9)
    fig.canvas.draw()
    box = title.get_window_extent()
    plt.close(fig)
    assert "\n" in title.get_text() and title.get_text().split() == long.split()
    assert box.x0 >= 0 and box.x1 <= width_in * fig.dpi  # nothing cut off at either side


def test_work_dir_is_the_benchmarks_own(tmp_path: Path):
    mine = tmp_path / "someone"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(WorkDirError, match="not made by `natscale bench nat`"):
        claim_work_dir(mine, QUICK)
    assert (mine / "notes.txt").read_text() == "keep me"
    work = tmp_path / "bench"
    claim_work_dir(work, QUICK)
    claim_work_dir(work, QUICK)  # the same protocol again: continue
    claim_work_dir(work, replace(QUICK, jobs=QUICK.jobs + 1))  # --jobs is not the protocol
    with pytest.raises(WorkDirError, match="differs in: steps"):
        claim_work_dir(work, replace(QUICK, steps=99))
    # a folder started before fields existed (the base model, the failure style) ran with their
    # defaults
    saved = json.loads((work / "preset.json").read_text())
    for later in ("base_steps", "base_lr", "failures", "base_prompt", "base_from", "calibration"):
        del saved[later]
    (work / "preset.json").write_text(json.dumps(saved))
    claim_work_dir(work, QUICK)
    with pytest.raises(WorkDirError, match="differs in: failures"):
        claim_work_dir(work, replace(QUICK, failures="systematic"))


def test_base_on_both_prompts_knows_every_evaluation_prompt(tmp_path: Path):
    """base_prompt "both": half of the base model's successes under the plain question, half under
    NAT's success prompt, prepared as one dataset; its own evaluation uses the plain prompt."""
    from natscale.bench.nat.data import BASE
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare
    from natscale.data.prepared import PreparedDir

    both = replace(SMALL, base_steps=5, base_prompt="both", failures="systematic")
    summary = build_pool(both, tmp_path)
    halves = [
        json.loads((tmp_path / "Pbase" / name).read_text())
        for name in ("trajectories.json", "trajectories-success-prompt.json")
    ]
    assert len(halves[0]) + len(halves[1]) == summary["subsets"]["Pbase"]["positives"]
    assert abs(len(halves[0]) - len(halves[1])) <= 1
    cfg = PrepareConfig.model_validate(prepare_config(both, tmp_path, BASE, "vanilla"))
    prepare(cfg, tmp_path / "Pbase" / "vanilla", progress=False)
    from transformers import AutoTokenizer

    prepared = PreparedDir(tmp_path / "Pbase" / "vanilla")
    tok = AutoTokenizer.from_pretrained(str(prepared.tokenizer))
    text = "".join(tok.decode(row["input_ids"]) for row in prepared.open())
    marked = text.count("to solve the problem correctly.")
    assert marked == len(halves[1])  # every success-prompt example, and no other
    assert text.count("Question:") == len(halves[0]) + len(halves[1])
    # evaluation needs the prompt file named (the data mix two); named, it renders the plain one
    from natscale.cli.eval import load_eval_config
    from natscale.eval.errors import EvalError
    from natscale.eval.prompting import Prompter

    config = tmp_path / "eval.yaml"
    config.write_text(f"model: m\nquestions: [{tmp_path / 'test.jsonl'}]\ntask: math\n")
    with pytest.raises(EvalError, match="mixes several task prompt files; set prompt"):
        load_eval_config(str(config), [], str(prepared.root))
    given = [f"prompt.file={tmp_path / 'prompt.json'}"]
    cfg = load_eval_config(str(config), given, str(prepared.root))
    assert cfg.prompt.file == str(tmp_path / "prompt.json")
    assert Prompter(cfg.prompt, None).template == "Question: {question}"
    # the comparison runs' data keep one prompt file
    assert len(prepare_config(both, tmp_path, 10, "nat")["sources"]) == 1


def test_cli_refuses_bad_input_with_exit_2(tmp_path: Path, capsys):
    from natscale.cli.main import main

    assert main(["bench", "nat", "--quick", "--preset", "cpu"]) == 2
    assert "give --quick or --preset" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.json").write_text("{}")
    args = ["bench", "nat", "--quick", "--work-dir", str(theirs), "--results", str(tmp_path)]
    assert main(args) == 2
    assert "not made by `natscale bench nat`" in capsys.readouterr().err
    assert sorted(p.name for p in theirs.iterdir()) == ["data.json"]  # nothing added, nothing lost


def test_a_variant_is_named_for_its_seeds_and_positives(capsys):
    from natscale.cli.main import main

    scarce = PRESETS["cpu-scarce"]
    assert variant(scarce) == scarce
    v = variant(scarce, seeds=(3, 4, 5), positives=(300,))
    assert (v.name, v.seeds, v.positives) == ("cpu-scarce-seeds345-p300", (3, 4, 5), (300,))
    assert replace(v, name=scarce.name, seeds=scarce.seeds, positives=scarce.positives) == scarce
    assert variant(scarce, seeds=(10, 11)).name == "cpu-scarce-seeds-10-11"
    # the seed 12 alone and the seeds 1 and 2 are different replications, in different folders
    assert variant(scarce, seeds=(12,)).name == "cpu-scarce-seeds-12"
    assert variant(scarce, seeds=(1, 2)).name == "cpu-scarce-seeds12"
    assert plan(variant(scarce, seeds=(6, 7)))[0].name == "Pbase/vanilla/seed6"  # a new base
    with pytest.raises(ValueError, match="distinct"):
        variant(scarce, seeds=(1, 1))
    # the base model learns from the successes after the 2,000th: P cannot reach into them
    assert main(["bench", "nat", "--preset", "cpu-scarce", "--positives", "2500"]) == 2
    assert "P can be at most 2000" in capsys.readouterr().err
    assert main(["bench", "nat", "--preset", "cpu", "--seeds", "1", "1"]) == 2
    assert "distinct" in capsys.readouterr().err


def test_warm_start_trains_a_base_on_other_successes_first(tmp_path: Path):
    warm = replace(SMALL, base_steps=7, base_lr=0.5)
    summary = build_pool(warm, tmp_path)
    base = json.loads((tmp_path / "Pbase" / "trajectories.json").read_text())
    largest = json.loads((tmp_path / "P20" / "trajectories.json").read_text())
    assert base and all(t["info"]["reward"] for t in base)  # successes only
    # none of them is in any P subset: the scarce positives stay new to the base model
    assert not {(t["id"], t["source"]) for t in base} & {(t["id"], t["source"]) for t in largest}
    assert len(base) == summary["pool_successes"] - 20 == summary["subsets"]["Pbase"]["positives"]
    runs = plan(warm)
    assert runs[0].name == "Pbase/vanilla/seed0" and len(runs) == 1 + 2 * 4
    first = train_config(warm, tmp_path, runs[0], tmp_path / "b")
    assert "config" in first["model"] and (first["train"]["steps"], first["train"]["lr"]) == (
        7,
        0.5,
    )
    later = train_config(warm, tmp_path, runs[1], tmp_path / "r")
    assert later["model"]["path"] == str(tmp_path / "runs/Pbase/vanilla/seed0/train/hf")
    assert (later["train"]["steps"], later["train"]["lr"]) == (warm.steps, warm.lr)
    # its calibration (vanilla on every success, `calibration: all`) starts from random init
    assert [r.name for r in plan(warm, calibrate=True)] == [
        f"Pall/vanilla/seed{s}" for s in warm.seeds
    ]
    calibration = train_config(warm, tmp_path, plan(warm, calibrate=True)[0], tmp_path / "c")
    assert "config" in calibration["model"] and "path" not in calibration["model"]
    # without base_steps: random init, no base run
    assert "config" in train_config(SMALL, tmp_path, plan(SMALL)[0], tmp_path / "x")["model"]
    assert not (tmp_path / "again" / "Pbase").exists()
    build_pool(SMALL, tmp_path / "again")
    assert not (tmp_path / "again" / "Pbase").exists()


def test_base_from_keeps_the_base_of_a_preset_with_larger_p(tmp_path: Path):
    """base_from: a preset with smaller P trains the base model of one with larger P, byte for
    byte, and the base never holds a success of a P subset."""
    from natscale.bench.nat.data import BenchDataError

    larger = replace(SMALL, base_steps=5)
    build_pool(larger, tmp_path / "larger")
    smaller = replace(larger, positives=(5,), base_from=20)
    summary = build_pool(smaller, tmp_path / "smaller")
    base = (tmp_path / "smaller" / "Pbase" / "trajectories.json").read_bytes()
    assert base == (tmp_path / "larger" / "Pbase" / "trajectories.json").read_bytes()
    assert summary["subsets"]["Pbase"]["positives"] == summary["pool_successes"] - 20
    with pytest.raises(BenchDataError, match="base_from=3 would give the base model successes"):
        build_pool(replace(larger, base_from=3), tmp_path / "overlap")
    assert not (tmp_path / "overlap" / "Pbase").exists()


def test_calibration_on_the_positives_is_the_comparisons_own_vanilla_runs():
    scarce = replace(SMALL, base_steps=5, calibration="positives", seeds=(0, 1))
    calibration = [r.name for r in plan(scarce, calibrate=True)]
    assert calibration == [
        "Pbase/vanilla/seed0",
        "P10/vanilla/seed0",
        "P20/vanilla/seed0",
        "P10/vanilla/seed1",
        "P20/vanilla/seed1",
    ]
    comparison = [r.name for r in plan(scarce)]
    assert set(calibration) <= set(comparison)  # reused by the comparison, not run twice
    assert len(comparison) == 1 + 2 * 2 * 4


def test_plan_covers_every_strategy_p_and_seed():
    cpu = PRESETS["cpu"]
    runs = plan(cpu)
    assert len(runs) == len(cpu.positives) * len(cpu.strategies) * len(cpu.seeds) == 24
    assert len({r.name for r in runs}) == 24
    assert [r.name for r in plan(cpu, calibrate=True)] == [
        "Pall/vanilla/seed0",
        "Pall/vanilla/seed1",
        "Pall/vanilla/seed2",
    ]


@pytest.mark.multiproc
@pytest.mark.timeout(900)  # 93-111 s measured at load 5; a busier machine takes longer
def test_quick_runs_the_pipeline_and_resumes(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "natscale.cli", "bench", "nat", "--quick"]
    argv += ["--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "bench nat: preset quick, 4 runs (0 reused)" in first.stdout
    records = sorted((tmp_path / "results").glob("nat_quick_*.json"))
    record = json.loads(records[-1].read_text())
    assert {"preset", "data", "rows", "runs", "environment", "interval"} <= set(record)
    assert record["environment"]["versions"]["torch"]
    assert len(record["runs"]) == 4
    for run in record["runs"]:
        assert run["train"]["steps"] == QUICK.steps
        assert math.isfinite(run["train"]["loss_last"])
        m = run["success_marker"]
        assert 0.0 <= m["accuracy"] <= 1.0 and m["episodes"] == QUICK.test_questions
        assert set(m["behaviour"]) <= set(BEHAVIOURS)
        assert sum(m["behaviour"].values()) == pytest.approx(1.0)
        assert m["behaviour"].get("correct", 0.0) == pytest.approx(m["accuracy"])
    nat = next(r for r in record["runs"] if r["strategy"] == "nat")
    assert nat["failure_marker"]["marker"] == "failure"
    assert Path(record["paths"]["png"]).is_file() and Path(record["paths"]["md"]).is_file()
    # each strategy against vanilla on the test questions; the record keeps no per-question data
    assert [r["strategy"] for r in record["paired"]] == ["nut", "nat", "nat-fine"]
    assert all(r["questions"] == QUICK.test_questions for r in record["paired"])
    assert not any("rewards" in run["success_marker"] for run in record["runs"])
    # a second call reuses every finished run: nothing is trained or evaluated again; a result
    # written before results held behaviours gets them from its episodes
    older = tmp_path / "work" / "runs" / "P24" / "nat" / "seed0" / "result.json"
    saved = json.loads(older.read_text())
    del saved["success_marker"]["behaviour"], saved["failure_marker"]["behaviour"]
    older.write_text(json.dumps(saved))
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 runs (4 reused)" in second.stdout
    assert "What the agents do" in second.stdout
    again = json.loads(sorted((tmp_path / "results").glob("nat_quick_*.json"))[-1].read_text())
    nat_again = next(r for r in again["runs"] if r["strategy"] == "nat")
    assert nat_again["failure_marker"]["behaviour"] == nat["failure_marker"]["behaviour"]
    log = tmp_path / "work" / "runs" / "P24" / "nat" / "seed0" / "train.log"
    assert log.read_text().count("natscale.cli train") == 1  # trained once, by the first call


def test_cli_refuses_a_file_work_dir_and_too_many_positives_before_writing(tmp_path: Path, capsys):
    from natscale.cli.main import main

    a_file = tmp_path / "q.json"
    a_file.write_text("[]")
    args = ["bench", "nat", "--quick", "--results", str(tmp_path / "results")]
    assert main([*args, "--work-dir", str(a_file)]) == 2
    assert f"{a_file} exists and is not a directory" in capsys.readouterr().err
    work = tmp_path / "work"
    assert main([*args, "--work-dir", str(work), "--positives", "100000"]) == 2
    err = capsys.readouterr().err
    assert "P=100000 needs 100000 successes" in err and "smaller --positives" in err
    assert not work.exists() and not (tmp_path / "results").exists()


def test_the_tool_call_preset_trains_and_evaluates_native_calls(tmp_path: Path):
    """`cpu-scarce-tools`: the same trajectories as native tool calls, with the tools in the
    prompt; its eval runs the tool-call loop with the same tools."""
    import datasets

    from natscale.bench.nat.presets import QUICK_TOOLS
    from natscale.bench.nat.runner import eval_config
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare
    from natscale.data.render import load_tokenizer

    small = replace(QUICK_TOOLS, positives=(10,), pool_questions=80, test_questions=30)
    build_pool(small, tmp_path)
    cfg = PrepareConfig.model_validate(prepare_config(small, tmp_path, 10, "nat"))
    result = prepare(cfg, tmp_path / "P10" / "nat", progress=False)
    assert result.stats["per_class"]["success"]["examples"] == 10
    row = datasets.load_from_disk(str(result.out_dir))[0]
    text = load_tokenizer(tmp_path / "P10" / "nat" / "tokenizer").decode(row["input_ids"])
    assert '<tools>\n{"name": "calculate"' in text and '{"name": "finish"' in text
    assert '<tool_call>\n{"name": "calculate", "arguments": {"expression": ' in text
    assert "Action:" not in text.split("[/INST]", 2)[2]  # the agent's turns are calls
    loop = eval_config(small, tmp_path, tmp_path / "run")["loop"]
    assert loop["protocol"] == "tool_calls" and PRESETS["cpu-scarce-tools"].max_new_tokens == 96


def test_seed_intervals_use_the_t_quantile_of_their_seed_count():
    import math
    import statistics

    from natscale.bench.nat.report import interval, t95

    assert (t95(2), t95(10), t95(30)) == (4.303, 2.228, 2.042)
    assert abs(t95(40) - 2.0211) < 1e-3 and abs(t95(120) - 1.9799) < 1e-3
    values = [0.5 + 0.01 * (i % 3) for i in range(11)]  # 11 seeds: 10 degrees of freedom
    half = 2.228 * statistics.stdev(values) / math.sqrt(11)
    lo, hi = interval(values)
    assert math.isclose(hi - lo, 2 * half)
