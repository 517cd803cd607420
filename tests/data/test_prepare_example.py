"""The shipped prepare configs: they validate, and prepare_math.yaml packs the example data."""

import hashlib
import json

import datasets
import numpy as np
import pytest

from natscale.config.loader import load_config
from natscale.config.prepare import PrepareConfig
from natscale.data.nat import render_inference_prompt
from natscale.data.prepare import prepare
from natscale.data.prompts import load_task_prompt
from natscale.data.render import Renderer, load_tokenizer
from natscale.data.schema import validate_row

from .nat_test_data import REPO

CONFIGS = sorted((REPO / "examples" / "configs").glob("prepare*.yaml"))
# sha256 of the rows prepare_math.yaml makes from the example data (rows_digest). A refactor or
# speed-up must keep it; change it only with a deliberate change of the rendered or packed rows.
MATH_ROWS_DIGEST = "d2f662695e2b074ce18059bf045f341af702e28e347656f76ad13bba3e24f3c4"


def rows_digest(ds: datasets.Dataset) -> str:
    """sha256 over every column of every row: name, dtype, shape and bytes."""
    h = hashlib.sha256()
    ds = ds.with_format("numpy")
    for name in sorted(ds.column_names):
        for value in ds[name]:
            v = np.asarray(value)
            h.update(f"{name} {v.dtype} {v.shape}".encode())
            h.update(v.tobytes())
    return h.hexdigest()


def test_configs_are_shipped():
    assert REPO / "examples" / "configs" / "prepare_math.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_its_inputs_exist(path):
    cfg = load_config(path, PrepareConfig)
    assert (REPO / cfg.render.tokenizer).is_dir()
    for src in cfg.sources:
        for p in src.paths:
            assert (REPO / p).exists(), p


def test_prepare_math_packs_the_example_data(monkeypatch, tmp_path, example_data):
    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository root
    cfg = load_config(REPO / "examples" / "configs" / "prepare_math.yaml", PrepareConfig)
    res = prepare(cfg, tmp_path / "math", progress=False)
    st = res.stats
    assert st["packing"]["efficiency"] >= 0.99
    # bfd_repair: within 0.5% of the L2 lower bound, and stats.json says how far
    pk = st["packing"]
    assert pk["algorithm"] == "bfd_repair" and pk["lower_bound"] == 258
    assert pk["rows"] <= 1.005 * pk["lower_bound"]
    assert pk["gap"] == pytest.approx(pk["rows"] / pk["lower_bound"] - 1, abs=1e-6)
    assert json.loads((res.out_dir / "stats.json").read_text())["packing"]["gap"] == pk["gap"]
    assert st["classes"] == ["success", "failure"]
    trajs = json.loads((example_data / "trajectories.json").read_text())
    n_success = sum(t["info"]["reward"] for t in trajs)
    assert st["per_class"]["success"]["examples"] == n_success
    assert st["per_class"]["failure"]["examples"] == len(trajs) - n_success
    ds = datasets.load_from_disk(str(res.out_dir)).with_format("numpy")
    assert sum(len(r["cu_seqlens"]) - 1 for r in ds) == len(trajs)
    for i, row in enumerate(ds):
        validate_row(row, max_seq_len=4096, where=f"row {i}")
    assert rows_digest(ds) == MATH_ROWS_DIGEST

    # evaluation renders the success prompt exactly as training saw it
    tok = load_tokenizer(res.out_dir / "tokenizer")
    prompt = load_task_prompt(example_data / "prompt.json")
    qid = next(t["id"] for t in trajs if t["info"]["reward"])
    lines = (example_data / "questions.jsonl").read_text().splitlines()
    question = next(q for q in map(json.loads, lines) if q["id"] == qid)
    ids = render_inference_prompt(
        question["question"], Renderer(tok, "llama2"), cfg.strategy, prompt
    )
    text = tok.decode(ids)
    assert text.endswith("solve the problem correctly. [/INST]") and question["question"] in text
    success_prefixes = {
        tuple(r["input_ids"][a : a + len(ids)].tolist())
        for r in ds
        for a, c in zip(r["cu_seqlens"][:-1], r["segment_class"], strict=True)
        if c == 0
    }
    assert tuple(ids) in success_prefixes


def test_prepare_without_packing_writes_one_example_per_row(monkeypatch, tmp_path, example_data):
    """pack.algorithm: none, for the families natscale cannot train on packed rows."""
    monkeypatch.chdir(REPO)
    cfg = load_config(
        REPO / "examples" / "configs" / "prepare_math.yaml",
        PrepareConfig,
        ["pack.algorithm=none"],
    )
    res = prepare(cfg, tmp_path / "unpacked", progress=False)
    trajs = json.loads((example_data / "trajectories.json").read_text())
    ds = datasets.load_from_disk(str(res.out_dir)).with_format("numpy")
    assert len(ds) == len(trajs) == res.stats["packing"]["rows"]
    assert all(len(r["cu_seqlens"]) == 2 for r in ds)
    assert res.stats["packing"]["algorithm"] == "none"
