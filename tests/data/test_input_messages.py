"""Clear messages for empty inputs, an empty tokenizer folder, a missing NAT question file and a
UTF-8 BOM; bad input exits 2 in `prepare` and `convert data` (issue 12, item 10)."""

import codecs
import json

import pytest
import yaml

from natscale.cli.main import main
from natscale.data.errors import DataError
from natscale.data.formats import load_trajectories
from natscale.data.prepare import prepare
from natscale.data.prompts import load_task_prompt
from natscale.data.render import load_tokenizer

from .nat_test_data import NAT_TRAJ, PROMPT, QUESTION, write_json, write_jsonl
from .test_prepare import _config


@pytest.mark.parametrize("name", ["t.json", "t.jsonl", "blank.jsonl"])
def test_an_empty_input_file_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n" if name.startswith("blank") else "")
    with pytest.raises(DataError, match=rf"{name}: file (is empty|holds only whitespace)"):
        load_trajectories(path, "nat")


def test_empty_questions_and_prompt_files_are_named(tmp_path):
    traj = write_json(tmp_path / "t.json", [NAT_TRAJ])
    (tmp_path / "q.jsonl").write_text("")
    with pytest.raises(DataError, match=r"q\.jsonl: file is empty"):
        load_trajectories(traj, "nat", questions=tmp_path / "q.jsonl")
    (tmp_path / "p.json").write_text("")
    with pytest.raises(DataError, match=r"p\.json: file is empty"):
        load_task_prompt(tmp_path / "p.json")


def test_prepare_cli_empty_input_exits_2_naming_it(tokenizer_dir, nat_files, tmp_path, capsys):
    traj = nat_files[0]
    traj.write_text("")
    cfg = _config(tokenizer_dir, nat_files)
    path = tmp_path / "prep.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    assert main(["prepare", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert f"{traj}: file is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_tokenizer_folder_names_the_path_and_the_files(tokenizer_dir, nat_files, tmp_path):
    empty = tmp_path / "tok"
    empty.mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"tok' holds no tokenizer: expected tokenizer\.json"
    ):
        load_tokenizer(empty)
    (empty / "tokenizer_config.json").write_text("{}")  # config alone is no tokenizer either
    with pytest.raises(FileNotFoundError, match=r"found tokenizer_config\.json") as exc:
        load_tokenizer(empty)
    assert "sentencepiece" not in str(exc.value)
    cfg = _config(empty, nat_files)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        prepare(cfg, tmp_path / "o", progress=False)


def test_utf8_bom_is_accepted(tmp_path):
    bom = codecs.BOM_UTF8
    rec = json.loads(json.dumps(NAT_TRAJ))
    rec["question"] = "What?"
    array = tmp_path / "a.json"
    array.write_bytes(bom + json.dumps([rec]).encode())
    lines = tmp_path / "l.jsonl"
    lines.write_bytes(bom + (json.dumps(rec) + "\n").encode())
    one = tmp_path / "o.json"
    one.write_bytes(bom + json.dumps(rec).encode())
    for path in (array, lines, one):
        (traj,) = load_trajectories(path, "nat")
        assert traj.id == "q1" and traj.question == "What?"
    q = tmp_path / "q.jsonl"
    q.write_bytes(bom + (json.dumps(QUESTION) + "\n").encode())
    p = tmp_path / "p.json"
    p.write_bytes(bom + json.dumps(PROMPT).encode())
    traj_file = write_json(tmp_path / "t.json", [NAT_TRAJ])
    (traj,) = load_trajectories(traj_file, "nat", questions=q, prompt=p)
    assert traj.question == QUESTION["question"] and traj.task == "math"


def test_convert_data_from_nat_names_the_question_files_it_looked_for(tmp_path, capsys):
    traj = write_json(tmp_path / "run1.json", [NAT_TRAJ])  # no question inside, no side file
    out = tmp_path / "out.jsonl"
    code = main(["convert", "data", "--from", "nat", "--to", "sharegpt", str(traj), str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"looked for {tmp_path / 'run1.questions.jsonl'}" in err
    assert str(tmp_path / "questions.jsonl") in err and "--option questions=FILE" in err
    assert not out.exists()
    write_jsonl(tmp_path / "run1.questions.jsonl", [QUESTION])  # found next to it: converts
    assert main(["convert", "data", "--from", "nat", "--to", "sharegpt", str(traj), str(out)]) == 0
    # an empty input is named, exit 2
    (tmp_path / "e.jsonl").write_text("")
    code = main(["convert", "data", "--from", "sharegpt", "--to", "nat", str(tmp_path / "e.jsonl"),
                 str(tmp_path / "n.jsonl")])  # fmt: skip
    assert code == 2 and "e.jsonl: file is empty" in capsys.readouterr().err
