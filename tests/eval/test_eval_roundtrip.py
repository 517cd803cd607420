"""Eval output feeds ``natscale prepare`` (collect -> label -> retrain), and ``--data`` reuses
the wording a dataset was prepared with; SIGTERM flushes, exits 0 and the run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from natscale.cli.eval import load_eval_config
from natscale.config.eval import EvalConfig
from natscale.config.prepare import PrepareConfig
from natscale.data.prepare import prepare
from natscale.eval.run import run_eval

from .conftest import (
    DATA,
    REPO,
    TOKENIZER,
    bundled_by_id,
    read_jsonl,
    scripted_fields,
    write_config,
)


def _prepare_fields(episodes, out) -> dict:
    return {
        "output": str(out),
        "sources": [
            {"format": "nat", "paths": [str(episodes)], "prompt": str(DATA / "prompt.json")}
        ],
        "render": {"tokenizer": str(TOKENIZER), "template": "llama2"},
        "pack": {"max_seq_len": 1024},
    }


def test_prepare_ingests_eval_episodes_and_data_reuses_its_wording(tmp_path):
    summary = run_eval(EvalConfig.model_validate(scripted_fields(tmp_path / "run", limit=120)))
    episodes = tmp_path / "run" / "episodes.jsonl"
    result = prepare(PrepareConfig.model_validate(_prepare_fields(episodes, tmp_path / "data")))
    per_class = result.stats["per_class"]
    wins = round(summary["metrics"]["accuracy"]["value"] * 120)
    assert per_class["success"]["examples"] == wins
    assert per_class["failure"]["examples"] == 120 - wins
    assert result.stats["trajectories"]["unfinished"] == summary["failures"]["turn_limit"]

    # --data: the prompt section comes from the prepared dataset; the config can still override
    cfg_path = write_config(
        tmp_path / "eval.yaml",
        **{k: v for k, v in scripted_fields(tmp_path / "r2").items() if k != "prompt"},
    )
    cfg = load_eval_config(str(cfg_path), ["prompt.marker=failure"], str(tmp_path / "data"))
    assert cfg.prompt.template == "llama2" and cfg.prompt.file == str(DATA / "prompt.json")
    assert cfg.prompt.tokenizer == str(tmp_path / "data" / "tokenizer")
    assert cfg.prompt.strategy.name == "nat" and cfg.prompt.marker == "failure"

    # the eval prompt is token for token the training prompt of the same question
    from natscale.data.render import Renderer, load_tokenizer
    from natscale.eval.prompting import Prompter

    cfg = load_eval_config(str(cfg_path), [], str(tmp_path / "data"))
    prompter = Prompter(cfg.prompt, load_tokenizer(cfg.prompt.tokenizer))
    ep = read_jsonl(episodes)[0]
    history = ep["conversations"]
    full = Renderer(load_tokenizer(TOKENIZER), "llama2").encode(
        prompter.messages(ep["question"], history)
    )
    prompt_ids = prompter.ids(prompter.messages(ep["question"], []))
    assert full.ids[: len(prompt_ids)].tolist() == prompt_ids
    assert not full.mask[: len(prompt_ids)].any() and full.mask[len(prompt_ids) :].any()


def _slow_calculate_module(tmp_path):
    (tmp_path / "slowtool.py").write_text(
        "import time\nfrom natscale.agent.calculator import calculate as _c\n"
        "def calculate(expr):\n    time.sleep(0.004)\n    return _c(expr)\n"
    )


def test_sigterm_flushes_exits_0_and_resumes(tmp_path):
    _slow_calculate_module(tmp_path)
    fields = scripted_fields(tmp_path / "run", limit=600)
    fields["tools"] = {"names": ["calculate"], "user": {"calculate": "slowtool:calculate"}}
    cfg = write_config(tmp_path / "eval.yaml", **fields)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}")
    cmd = [sys.executable, "-m", "natscale.cli.main", "eval", str(cfg), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    episodes = tmp_path / "run" / "episodes.jsonl"
    deadline = time.monotonic() + 120
    while not (episodes.exists() and episodes.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no episode written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    done = read_jsonl(episodes)
    assert 0 < len(done) < 600 and "INCOMPLETE" in out
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    final = read_jsonl(episodes)
    assert final[: len(done)] == done and len(final) == 600
    bundled = bundled_by_id()
    assert all(e["info"]["reward"] == bundled[e["id"]][0]["info"]["reward"] for e in final)


def test_data_with_a_relative_prompt_path_finds_it_says_so_or_names_the_fix(
    tmp_path, monkeypatch, capsys
):
    import shutil

    import pytest

    from natscale.eval.errors import EvalError

    run_eval(EvalConfig.model_validate(scripted_fields(tmp_path / "run", limit=20)))
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(DATA / "prompt.json", proj / "prompt.json")
    monkeypatch.chdir(proj)  # prepare records `prompt: prompt.json`, relative to here
    fields = _prepare_fields(tmp_path / "run" / "episodes.jsonl", proj / "data")
    fields["sources"][0]["prompt"] = "prompt.json"
    prepare(PrepareConfig.model_validate(fields))
    cfg_path = write_config(
        tmp_path / "eval.yaml",
        **{k: v for k, v in scripted_fields(tmp_path / "r2").items() if k != "prompt"},
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_eval_config(str(cfg_path), [], str(proj / "data"))
    assert cfg.prompt.file == str(proj / "prompt.json")  # found above the dataset
    assert f"prompt.file prompt.json (from --data {proj / 'data'}" in capsys.readouterr().err
    (elsewhere / "prompt.json").write_text('{"other": "wording"}')
    with pytest.raises(EvalError, match="names different files") as err:
        load_eval_config(str(cfg_path), [], str(proj / "data"))
    assert "--set prompt.file=PATH" in str(err.value)
    (elsewhere / "prompt.json").unlink()
    (proj / "prompt.json").unlink()
    with pytest.raises(EvalError, match="task prompt file not found") as err:
        load_eval_config(str(cfg_path), [], str(proj / "data"))
    assert "prepare_config.yaml" in str(err.value) and "--set prompt.file=PATH" in str(err.value)
