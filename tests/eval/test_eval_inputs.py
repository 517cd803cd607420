"""Bad input to ``natscale eval``: clear errors naming file / line / field, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

from natscale.cli.main import main

from .conftest import DATA, scripted_fields, write_config


def _run(tmp_path, capsys, **changes) -> tuple[int, str]:
    fields = scripted_fields(tmp_path / "out")
    fields.update(changes)
    cfg = write_config(tmp_path / "eval.yaml", **fields)
    code = main(["eval", str(cfg), "--no-progress"])
    return code, capsys.readouterr().err


def test_malformed_questions_line_is_named(tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "question": "1+1?", "answer": "#### 2"}\n{"id": "b", "question"\n')
    code, err = _run(tmp_path, capsys, questions=[str(q)])
    assert code == 2 and "q.jsonl" in err and "line 2" in err
    assert not (tmp_path / "out").exists()


def test_question_without_gold_answer(tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text(
        '{"id": "a", "question": "1+1?", "answer": "#### 2"}\n{"id": "b", "question": "x"}\n'
    )
    code, err = _run(tmp_path, capsys, questions=[str(q)])
    assert code == 2 and "q.jsonl" in err and "no gold answer" in err and "'answer'" in err


def test_unknown_tool(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, tools={"names": ["calculate", "browse"]})
    assert code == 2 and "unknown tool 'browse'" in err


def test_corpus_not_jsonl(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"title": "a", "text": "b"}\n[not, json\n')
    code, err = _run(tmp_path, capsys, tools={"names": ["search"], "corpus": str(corpus)})
    assert code == 2 and "corpus.jsonl:2: not JSONL" in err


def test_output_holding_another_evals_episodes(tmp_path, capsys):
    code, _ = _run(tmp_path, capsys, limit=10)
    assert code == 0
    before = (tmp_path / "out" / "episodes.jsonl").read_bytes()
    code, err = _run(tmp_path, capsys, limit=10)
    assert code == 2 and "pass --resume" in err
    cfg = write_config(
        tmp_path / "other.yaml", **scripted_fields(tmp_path / "out", limit=10, task="qa")
    )
    assert main(["eval", str(cfg), "--resume", "--no-progress"]) == 2
    assert "another eval's episodes" in capsys.readouterr().err
    assert (tmp_path / "out" / "episodes.jsonl").read_bytes() == before


def test_unknown_config_key_and_missing_model(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, sampling={"temprature": 0.2})
    assert code == 2 and "sampling.temprature" in err
    fields = scripted_fields(tmp_path / "out")
    fields["backend"] = "hf"
    cfg = write_config(tmp_path / "hf.yaml", **fields)
    assert main(["eval", str(cfg)]) == 2
    assert "needs `model`" in capsys.readouterr().err


def test_unreachable_endpoint_fails_before_any_episode(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fields = scripted_fields(tmp_path / "out")
    fields.update(
        backend="openai",
        model=f"http://127.0.0.1:{port}/v1",
        prompt={"file": str(DATA / "prompt.json"), "tokenizer": str(DATA.parent / "tokenizer")},
        openai={"timeout_s": 2},
    )
    cfg = write_config(tmp_path / "oa.yaml", **fields)
    assert main(["eval", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and f"127.0.0.1:{port}" in err
    assert not (tmp_path / "out" / "episodes.jsonl").exists()


def test_scripted_backend_without_trajectory_for_a_question(tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "zzz", "question": "1+1?", "answer": "#### 2"}) + "\n")
    code, err = _run(tmp_path, capsys, questions=[str(q)])
    assert code == 2 and "no trajectory for 1 question" in err


@pytest.mark.parametrize("bad", ["compare"])
def test_compare_needs_runs(bad, capsys):
    assert main(["eval", bad]) == 2
    assert "at least one" in capsys.readouterr().err
