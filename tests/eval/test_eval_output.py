"""Where ``natscale eval`` writes: only a new or empty folder or its own output, never a run
directory, model, dataset, input or the working directory; resume compares paths, not spellings."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest

from natscale.atomic import MARKER
from natscale.cli.main import main

from .conftest import DATA, scripted_fields, write_config


def _eval(tmp_path, capsys, out, *extra: str, **changes) -> tuple[int, str]:
    fields = scripted_fields(out, limit=5)
    fields.update(changes)
    cfg = write_config(tmp_path / "eval.yaml", **fields)
    code = main(["eval", str(cfg), "--no-progress", *extra])
    return code, capsys.readouterr().err


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _folder(tmp_path, name: str, files: dict[str, str]):
    folder = tmp_path / name
    folder.mkdir()
    for rel, text in files.items():
        (folder / rel).write_text(text)
    return folder


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"summary.json": '{"status": "done"}', "metrics.jsonl": "{}\n"}, "training run directory"),
        ({"summary.json": '{"status": "done", "steps": 3}'}, "training run directory"),
        ({"config.json": "{}", "model.safetensors": "x"}, "Hugging Face model folder"),
        ({MARKER: '{"kind": "prepared", "version": 2, "entries": []}'}, "prepared dataset"),
        ({"notes.txt": "mine"}, "not an evaluation output"),
        ({"run.json": '{"not": "an eval"}'}, "not an evaluation output"),
    ],
)
def test_foreign_folder_is_refused_untouched(tmp_path, capsys, files, reason):
    out = _folder(tmp_path, "target", files)
    before = _snapshot(out)
    code, err = _eval(tmp_path, capsys, out)
    assert code == 2 and reason in err and str(out) in err
    assert _snapshot(out) == before  # nothing written, nothing replaced


def test_inside_a_model_folder_or_a_dataset_is_refused(tmp_path, capsys):
    hf = _folder(tmp_path, "hf", {MARKER: '{"kind": "hf-export", "version": 2, "entries": []}'})
    code, err = _eval(tmp_path, capsys, hf / "eval")
    assert code == 2 and "replaced as a whole" in err and not (hf / "eval").exists()


@pytest.mark.parametrize("inside", ["ev", "checkpoints/ev"])
def test_inside_a_training_run_directory_is_refused(tmp_path, capsys, inside):
    run = _folder(tmp_path, "run", {"metrics.jsonl": '{"step": 1}\n', "config.yaml": "{}"})
    (run / "checkpoints").mkdir()
    code, err = _eval(tmp_path, capsys, run / inside)
    assert code == 2 and "inside" in err and "a training run directory" in err, err
    assert not (run / inside).exists()


def test_working_directory_a_folder_above_it_and_an_input_folder_are_refused(
    tmp_path, capsys, monkeypatch
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (work, tmp_path):
        code, err = _eval(tmp_path, capsys, out)
        assert code == 2 and "working directory" in err
    questions = _folder(tmp_path, "qdir", {})
    shutil.copy(DATA / "questions.jsonl", questions / "q.jsonl")
    code, err = _eval(tmp_path, capsys, questions, questions=[str(questions / "q.jsonl")])
    assert code == 2 and "holds an input" in err
    assert sorted(p.name for p in questions.iterdir()) == ["q.jsonl"]
    assert not (work / "run.json").exists() and not (tmp_path / "run.json").exists()


def test_empty_folder_is_filled_and_run_json_alone_names_itself(tmp_path, capsys):
    out = _folder(tmp_path, "empty", {})
    assert _eval(tmp_path, capsys, out)[0] == 0
    assert (out / "summary.json").is_file()
    (out / "episodes.jsonl").unlink()
    (out / "summary.json").unlink()
    code, err = _eval(tmp_path, capsys, out)
    assert code == 2 and "(run.json)" in err and "episodes.jsonl" not in err
    assert _eval(tmp_path, capsys, out, "--resume")[0] == 0  # its own output: resumed


def test_resume_compares_paths_not_spellings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(DATA / "questions.jsonl", tmp_path / "q.jsonl")
    out = tmp_path / "out"
    assert _eval(tmp_path, capsys, out, questions=["q.jsonl"], limit=3)[0] == 0
    code, _ = _eval(tmp_path, capsys, out, "--resume", questions=[str(tmp_path / "q.jsonl")])
    assert code == 0
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 5


def test_resume_from_another_directory_names_the_paths_that_differ(tmp_path, capsys, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(DATA / "questions.jsonl", tmp_path / name / "q.jsonl")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "a")
    assert _eval(tmp_path, capsys, out, questions=["q.jsonl"], limit=3)[0] == 0
    monkeypatch.chdir(tmp_path / "b")  # the same spelling is another file here
    code, err = _eval(tmp_path, capsys, out, "--resume", questions=["q.jsonl"])
    assert code == 2 and "differs in: questions" in err


def test_resume_refuses_files_changed_in_place(tmp_path, capsys):
    shutil.copy(DATA / "questions.jsonl", tmp_path / "q.jsonl")
    out = tmp_path / "out"
    assert _eval(tmp_path, capsys, out, questions=[str(tmp_path / "q.jsonl")], limit=3)[0] == 0
    assert "questions[0]" in json.loads((out / "run.json").read_text())["inputs"]
    lines = (tmp_path / "q.jsonl").read_text().splitlines()
    (tmp_path / "q.jsonl").write_text("\n".join(reversed(lines)) + "\n")  # regenerated
    before = _snapshot(out)
    code, err = _eval(tmp_path, capsys, out, "--resume", questions=[str(tmp_path / "q.jsonl")])
    assert code == 2 and "whose files have changed since: questions[0]" in err
    assert _snapshot(out) == before


def test_resume_refuses_a_prompt_file_edited_in_place(tmp_path, capsys):
    prompt = tmp_path / "prompt.json"
    shutil.copy(DATA / "prompt.json", prompt)
    out = tmp_path / "out"
    assert _eval(tmp_path, capsys, out, prompt={"file": str(prompt)}, limit=3)[0] == 0
    fields = json.loads(prompt.read_text())
    fields["instruction"] = fields.get("instruction", "") + " Be brief."
    prompt.write_text(json.dumps(fields))
    code, err = _eval(tmp_path, capsys, out, "--resume", prompt={"file": str(prompt)})
    assert code == 2 and "whose files have changed since: prompt.file" in err


def test_a_tokenizer_with_another_chat_template_has_another_identity(tmp_path):
    from natscale.config.eval import EvalConfig
    from natscale.eval.inputs import input_identity

    tok = shutil.copytree(DATA.parent / "tokenizer", tmp_path / "tok")
    cfg = EvalConfig.model_validate({"model": str(tmp_path / "m"), "questions": ["q.jsonl"],
                                     "prompt": {"tokenizer": str(tok)}})  # fmt: skip
    first = input_identity(cfg)["tokenizer"]
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    assert input_identity(cfg)["tokenizer"] != first


def test_a_bundled_response_template_is_a_name_not_a_path(tmp_path, monkeypatch):
    """An eval with absolute paths and ``response_template: tool_call_json`` has one fingerprint
    wherever it runs; one recorded before that (the name made a path, ``prompt.chat_template``
    as spelled; digest by natscale at 5699b62, run from ``/``) still resumes."""
    from natscale.config.eval import EvalConfig
    from natscale.eval.output import _legacy_fingerprints, fingerprint

    fields = {"backend": "openai", "model": "http://h:1/v1", "questions": ["/data/q.jsonl"],
              "prompt": {"tokenizer": "/t", "template": "hf", "chat_template": "t.jinja",
                         "response_template": "tool_call_json"},
              "loop": {"protocol": "tool_calls"}}  # fmt: skip
    cfg = EvalConfig.model_validate(fields)
    monkeypatch.chdir("/")
    here = fingerprint(cfg)
    assert _legacy_fingerprints(cfg)[1] == "5aefffa299daf4a4"
    monkeypatch.chdir(tmp_path)
    assert _legacy_fingerprints(cfg)[1] != "5aefffa299daf4a4"  # a path, so another one here
    fields["prompt"]["chat_template"] = "/t.jinja"
    assert fingerprint(EvalConfig.model_validate(fields)) == here  # t.jinja from / is /t.jinja


def test_resume_names_the_fields_that_differ(tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(tmp_path, capsys, out)[0] == 0
    before = _snapshot(out)
    code, err = _eval(tmp_path, capsys, out, "--resume", sampling={"seed": 7}, task="qa")
    assert code == 2 and "differs in: sampling.seed, task" in err and "episodes are kept" in err
    assert _snapshot(out) == before
    assert json.loads((out / "run.json").read_text())["config"]["sampling"]["seed"] == 0


@pytest.mark.parametrize(
    "content",
    [
        '[{"id": "a", "question": "1+1?"}]',
        '{"metrics": {"accuracy": 0.5}}',
        '{"status": "done", "steps": 3, "losses": [1.0]}',
        '{"fingerprint": "abc", "config": {}}',
    ],
)
def test_compare_refuses_what_is_not_an_eval_summary(tmp_path, capsys, content):
    folder = _folder(tmp_path, "run", {"summary.json": content})
    for target in (folder, folder / "summary.json"):
        assert main(["eval", "compare", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"{folder / 'summary.json'}: not an eval summary.json" in err


def test_compare_marks_incomplete_evals_and_prints_a_summary_line(tmp_path, capsys):
    for name in ("a", "b"):
        assert _eval(tmp_path, capsys, tmp_path / name)[0] == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    summary.update(complete=False, expected_episodes=1600)
    summary["throughput"]["episodes_per_s"] = 9.0527
    (tmp_path / "b" / "summary.json").write_text(json.dumps(summary))
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    rows = captured.out.strip().splitlines()
    assert len(rows) == 4 and "| 5 |" in rows[2] and "| 5 of 1600 (incomplete) |" in rows[3]
    assert rows[3].endswith("| 9.05 |")  # rounded as in the summary line
    assert captured.err.strip() == (
        "natscale eval compare: 2 evaluations, 1 incomplete (rerun with --resume to finish)"
    )


class _FakeDist:
    """torch.distributed as rank ``rank`` of 2 sees it; rank 0's verdict is ``verdict``."""

    def __init__(self, rank: int, verdict: str | None = None) -> None:
        self.rank, self.verdict = rank, verdict

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return 2

    def broadcast_object_list(self, objects: list, src: int) -> None:
        assert src == 0
        if self.rank != 0:
            objects[0] = self.verdict


def test_only_rank_0_checks_the_output_so_its_run_json_does_not_refuse_a_peer(tmp_path):
    from natscale.config.eval import EvalConfig
    from natscale.eval.errors import EvalError
    from natscale.eval.output import checked_output, fingerprint

    cfg = EvalConfig.model_validate(scripted_fields(tmp_path / "out", limit=5))
    out = tmp_path / "out"
    out.mkdir()  # rank 0 is already past its check and has written run.json
    config = cfg.model_dump(mode="json")
    (out / "run.json").write_text(json.dumps({"fingerprint": fingerprint(cfg), "config": config}))
    assert checked_output(out, cfg, False, [], dist=_FakeDist(1), held=contextlib.ExitStack()) == []
    with pytest.raises(EvalError, match="refused by rank 0"):
        checked_output(
            out, cfg, False, [], dist=_FakeDist(1, "refused by rank 0"), held=contextlib.ExitStack()
        )
    with pytest.raises(EvalError, match=r"already holds an evaluation \(run.json\)"):
        checked_output(out, cfg, False, [], dist=_FakeDist(0), held=contextlib.ExitStack())


def test_a_resume_with_nothing_left_keeps_the_measured_throughput(tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(tmp_path, capsys, out)[0] == 0
    first = json.loads((out / "summary.json").read_text())["throughput"]
    assert _eval(tmp_path, capsys, out, "--resume")[0] == 0
    again = json.loads((out / "summary.json").read_text())["throughput"]
    assert again["episodes_per_s"] == first["episodes_per_s"] and "earlier run" in again["measured"]


def test_a_model_retrained_in_place_has_another_identity(tmp_path):
    from natscale.eval.inputs import _model

    model = _folder(tmp_path, "hf", {"config.json": "{}", "notes.md": "x"})
    (model / "model.safetensors").write_bytes(b"header" + bytes(100))
    first = _model(model)
    (model / "notes.md").write_text("other notes")  # not the model: the same
    shutil.copytree(model, tmp_path / "copy")  # a copy (new mtimes): the same
    assert _model(model) == first == _model(tmp_path / "copy")
    (model / "model.safetensors").write_bytes(b"header" + bytes(99) + b"\x01")  # new weights
    assert _model(model) != first


def test_summary_line_rounds_the_rates():
    from natscale.eval.run import summary_line

    summary = {
        "task": "math",
        "metrics": {"accuracy": {"value": 0.41, "ci95": [0.345, 0.475]}},
        "failures": {"turn_limit": 12, "unknown_tool": 0},
        "throughput": {"episodes_per_s": 3.13456, "generated_tokens_per_s": 290.4172},
        "episodes": 200,
        "questions": 200,
        "output": "runs/demo/eval",
        "complete": True,
    }
    assert summary_line(summary) == (
        "natscale eval: math accuracy 41.0% [34.5, 47.5] over 200 episodes of 200 questions; "
        "failures: turn_limit 12; 3.13 episodes/s, 290 tokens/s; runs/demo/eval"
    )
    summary["throughput"] = {"episodes_per_s": 0.012345, "generated_tokens_per_s": None}
    assert "0.0123 episodes/s, n/a tokens/s;" in summary_line(summary)


def test_a_misspelt_set_key_says_it_came_from_set(tmp_path, capsys):
    code, err = _eval(tmp_path, capsys, tmp_path / "out", "--set", "limt=3")
    assert code == 2
    assert "limt: unknown key (check its spelling and section) (the value given with --set)" in err
    assert not (tmp_path / "out").exists()


def test_data_that_does_not_exist_is_named_as_missing(tmp_path, capsys):
    code, err = _eval(tmp_path, capsys, tmp_path / "out", "--data", str(tmp_path / "nope"))
    assert code == 2
    assert f"--data {tmp_path / 'nope'}: no such directory" in err
    assert "natscale prepare CONFIG --out" in err and not (tmp_path / "out").exists()


def test_no_progress_shows_no_bar_of_the_libraries_either(tmp_path, tiny_model):
    # transformers' "Loading weights" bar is a progress bar too; in a subprocess, as turning
    # the libraries' bars off is global to the process
    import os
    import subprocess
    import sys

    from .conftest import REPO

    fields = scripted_fields(tmp_path / "out", limit=2)
    fields.update(backend="hf", model=str(tiny_model), loop={"max_new_tokens": 4})
    del fields["scripted"]
    cfg = write_config(tmp_path / "eval.yaml", **fields)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "natscale.cli", "eval", str(cfg), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "natscale eval: math accuracy" in proc.stdout
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr, proc.stderr


def test_a_run_or_checkpoint_folder_as_the_model_names_what_to_give(tmp_path, capsys):
    # a new user's mistake: model=RUN (or RUN/checkpoints) instead of RUN/hf
    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "config.json").write_text("{}")
    (run / "checkpoints" / "global_step4").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("global_step4")
    for model, needle in (
        (run, f"It is a training run directory; its HF export is {run / 'hf'}"),
        (run / "checkpoints", f"`natscale convert zero-to-hf {run / 'checkpoints'} OUT_DIR`"),
    ):
        code, err = _eval(tmp_path, capsys, tmp_path / "out", backend="hf", model=str(model))
        assert code == 2 and "no config.json; not a Hugging Face model directory" in err, err
        assert needle in err, err
    shutil.rmtree(run / "hf")  # a run without an export: its checkpoints
    code, err = _eval(tmp_path, capsys, tmp_path / "out", backend="hf", model=str(run))
    assert code == 2 and f"zero-to-hf {run / 'checkpoints'} OUT_DIR" in err, err
    assert not (tmp_path / "out").exists()


def test_fingerprints_of_earlier_configs_are_unchanged_by_later_fields():
    """Fields added later (loop.protocol, tools.schemas, ...) leave the fingerprint of a config
    that keeps their defaults as it was, so an eval started before them still resumes. The
    digests were computed by natscale at 7e1d65e."""
    from natscale.config.eval import EvalConfig
    from natscale.eval.output import fingerprint

    hf = {
        "model": "/models/m",
        "questions": ["/data/q.jsonl"],
        "prompt": {"file": "/data/prompt.json"},
    }
    served = {"backend": "openai", "model": "http://h:1/v1", "questions": ["/data/q.jsonl"],
              "prompt": {"tokenizer": "/t"}}  # fmt: skip
    assert fingerprint(EvalConfig.model_validate(hf)) == "53f3c4c966b63898"
    assert fingerprint(EvalConfig.model_validate(served)) == "2943dfc1e307e03a"
    native = {**served, "loop": {"protocol": "tool_calls"}}
    assert fingerprint(EvalConfig.model_validate(native)) != "2943dfc1e307e03a"


def test_a_second_eval_of_an_output_in_use_stops_and_writes_nothing(tmp_path, capsys):
    """Two --resume runs of one output (a requeued job, the first still alive) each appended the
    episodes missing at their start: most episodes were written twice."""
    from natscale.eval.lock import LOCK, output_lock

    out = tmp_path / "out"
    assert _eval(tmp_path, capsys, out, limit=2)[0] == 0
    before = _snapshot(out)
    assert LOCK not in before  # the lock goes with its run
    with output_lock(out):  # another eval of this output is running
        code, err = _eval(tmp_path, capsys, out, "--resume")
        assert code == 2 and f"output {out} is in use" in err, err
        assert _snapshot(out) == {**before, LOCK: b""}
        code, err = _eval(tmp_path, capsys, tmp_path / "new", "--resume")
        assert code == 0, err  # other outputs are free
    (out / LOCK).write_text("")  # left by a killed run: the kernel dropped its lock
    code, err = _eval(tmp_path, capsys, out, "--resume")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    keys = [(r["id"], r["sample"]) for r in records]
    assert len(keys) == len(set(keys)) == 5 and not (out / LOCK).exists()


def test_a_refused_new_output_leaves_no_folder(tmp_path, capsys):
    from natscale.eval.lock import output_lock

    out = tmp_path / "fresh"
    with output_lock(out):
        code, err = _eval(tmp_path, capsys, out)
        assert code == 2 and "is in use" in err
    assert not out.exists()  # made for the lock, removed with it
