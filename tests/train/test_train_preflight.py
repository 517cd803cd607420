"""Faults caught before any process group starts: clear errors that name the file and field."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from natscale.cli.main import main
from natscale.config.loader import load_config
from natscale.config.run import RunConfig
from natscale.train.preflight import PreflightError, check_run
from tests.train.train_fixtures import (
    VOCAB,
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)


@pytest.fixture
def setup(tmp_path: Path):
    save_rows(pack_greedy(make_segments(10, seed=0), 64), tmp_path / "data")
    write_model_config(tmp_path / "model")
    cfg = write_run_config(
        tmp_path / "run.yaml",
        data_dir=tmp_path / "data",
        model_config=tmp_path / "model",
        out=tmp_path / "out",
    )
    return tmp_path, cfg


def _check(cfg: Path, *overrides: str, resume: bool = False):
    return check_run(load_config(cfg, RunConfig, list(overrides)), resume=resume)


def _tokenizer(path: Path, words: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0]).save_pretrained(str(path))
    return path


def test_a_good_setup_passes(setup):
    _, cfg = setup
    checks = _check(cfg)
    assert checks.vocab_size == VOCAB and checks.tokenizer_dir is None
    assert "no tokenizer" in checks.notes[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{cfg}"],
        ["train", "--config", "{cfg}"],
        ["--local_rank=0", "train", "--config", "{cfg}"],  # deepspeed --module natscale.cli ...
    ],
)
def test_cli_fails_before_any_process_group(setup, capsys, argv):
    tmp, cfg = setup
    argv = [a.format(cfg=cfg) for a in argv]
    assert main([*argv, "--set", f"data.path={tmp / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert f"data.path: {tmp / 'nowhere'} does not exist; prepare the data first" in err
    assert f"natscale prepare CONFIG --out {tmp / 'nowhere'}" in err
    (tmp / "nowhere").mkdir()  # a folder that is not a prepare output
    assert main([*argv, "--set", f"data.path={tmp / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert "is not a `natscale prepare` output directory" in err and "nowhere" in err
    assert not dist.is_initialized()


def test_preflight_checks_the_ds_config_without_the_training_engine(setup, monkeypatch):
    _, cfg = setup
    monkeypatch.delitem(sys.modules, "natscale.train.engine", raising=False)
    _check(cfg)
    assert "natscale.train.engine" not in sys.modules


def test_cli_needs_a_config(capsys):
    assert main(["train"]) == 2
    assert "no run config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.config=/no/such/dir"], "model.config: /no/such/dir not found"),
        (
            ["deepspeed.config=ds_configs/nope.json"],
            "deepspeed.config: ds_configs/nope.json not found",
        ),
        (
            ["deepspeed.overrides.gradient_clipping=3.0"],
            "gradient_clipping is 3.0 but the run config says 1.0",
        ),
    ],
)
def test_bad_model_or_ds_config(setup, overrides, needle):
    from natscale.config.loader import ConfigError

    _, cfg = setup
    with pytest.raises((PreflightError, ConfigError)) as exc:
        _check(cfg, *overrides)
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    ("model_type", "fields", "needle"),
    [
        ("gemma2", {"head_dim": 8}, "gemma2 caps its logits (final_logit_softcapping=30)"),
        ("phi", {}, "phi's lm_head has a bias"),
    ],
)
def test_fused_loss_on_a_model_it_cannot_train_exactly_is_refused(
    setup, capsys, model_type, fields, needle
):
    import json

    tmp, cfg = setup
    config = json.loads((tmp / "model" / "config.json").read_text())
    folder = tmp / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, **fields, "model_type": model_type}))
    assert main(["train", str(cfg), "--set", f"model.config={folder}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "set model.loss: logits" in err
    assert not (tmp / "out").exists() and not dist.is_initialized()
    _check(cfg, f"model.config={folder}", "model.loss=logits")  # the way out passes


def test_model_dir_without_weights(setup):
    tmp, cfg = setup
    with pytest.raises(
        PreflightError, match=r"has no \*\.safetensors or pytorch_model\*\.bin weights"
    ):
        _check(cfg, f"model.path={tmp / 'model'}", "model.config=null")


def test_a_truncated_safetensors_file_is_named_before_any_process_group(setup, capsys):
    # from_pretrained's SafetensorError went through as a traceback once the engine was built
    import torch
    from safetensors.torch import save_file

    tmp, cfg = setup
    weights = tmp / "model" / "model.safetensors"
    save_file({"w": torch.zeros(256)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:100])  # head -c 100
    argv = ["train", str(cfg), "--set", f"model.path={tmp / 'model'}", "--set", "model.config=null"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"model.path: {weights} (100 bytes) is damaged" in err and "copy it again" in err
    assert "Traceback" not in err and not (tmp / "out").exists() and not dist.is_initialized()


def test_wrong_field_dtype(setup):
    import datasets

    tmp, cfg = setup
    ds = datasets.load_from_disk(str(tmp / "data"))
    ds = ds.cast_column("segment_weight", datasets.List(datasets.Value("float64")))
    ds.save_to_disk(str(tmp / "data64"))
    (tmp / "data64" / "stats.json").write_bytes((tmp / "data" / "stats.json").read_bytes())
    with pytest.raises(
        PreflightError, match=r"field 'segment_weight' holds .*expected a list of float32"
    ):
        _check(cfg, f"data.path={tmp / 'data64'}")


def test_int64_token_columns_of_older_data_are_read(setup):
    import datasets
    import torch

    from natscale.train.batch import collate

    tmp, cfg = setup
    ds = datasets.load_from_disk(str(tmp / "data"))
    assert ds.features["input_ids"].feature.dtype == "int32"  # what prepare writes now
    for name in ("input_ids", "position_ids", "targets"):
        ds = ds.cast_column(name, datasets.List(datasets.Value("int64")))
    ds.save_to_disk(str(tmp / "old"))
    (tmp / "old" / "stats.json").write_bytes((tmp / "data" / "stats.json").read_bytes())
    _check(cfg, f"data.path={tmp / 'old'}")
    rows = [dict(r, index=i) for i, r in enumerate(ds.with_format("numpy").select([0, 1]))]
    new = datasets.load_from_disk(str(tmp / "data")).with_format("numpy").select([0, 1])
    a = collate(rows, loss_norm="token", vocab_size=2**20)
    b = collate([dict(r, index=i) for i, r in enumerate(new)], loss_norm="token", vocab_size=2**20)
    assert a.input_ids_BL.dtype == b.input_ids_BL.dtype == torch.int64
    assert torch.equal(a.input_ids_BL, b.input_ids_BL) and torch.equal(a.targets_T, b.targets_T)


def test_token_ids_outside_the_model_vocabulary(setup):
    tmp, cfg = setup
    write_model_config(tmp / "small", vocab=16)
    with pytest.raises(
        PreflightError,
        match=r"row \d+ holds token id \d+, outside the model's vocabulary \[0, 16\)",
    ):
        _check(cfg, f"model.config={tmp / 'small'}")


def test_tokenizer_larger_than_the_model(setup):
    tmp, cfg = setup
    _tokenizer(tmp / "data" / "tokenizer", [f"w{i}" for i in range(VOCAB + 4)])
    with pytest.raises(
        PreflightError, match=f"has {VOCAB + 4} tokens but the model's vocab_size is {VOCAB}"
    ):
        _check(cfg)


@pytest.mark.parametrize("command", ["train", "launch"])
def test_a_corrupt_tokenizer_is_exit_2_naming_the_folder(setup, capsys, command):
    # AutoTokenizer.from_pretrained's JSONDecodeError went through as a traceback (train and
    # launch --dry-run); natscale's own loader says which folder cannot be loaded
    tmp, cfg = setup
    tok = _tokenizer(tmp / "tok", ["w0", "w1"])
    (tok / "tokenizer.json").write_text('{"version": "1.0", "model": {\n')  # cut short
    argv = [command, *(["--dry-run"] if command == "launch" else []), str(cfg)]
    assert main([*argv, "--set", f"model.tokenizer={tok}"]) == 2
    err = capsys.readouterr().err
    assert f"model.tokenizer: tokenizer directory '{tok}' cannot be loaded" in err
    assert "Traceback" not in err and not (tmp / "out").exists()


def test_data_and_model_tokenizers_differ(setup):
    from transformers import AutoConfig, AutoModelForCausalLM

    tmp, cfg = setup
    _tokenizer(tmp / "data" / "tokenizer", [f"w{i}" for i in range(8)])
    model_dir = tmp / "hfmodel"
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp / "model")).save_pretrained(
        model_dir
    )
    _tokenizer(model_dir, [f"x{i}" for i in range(8)])
    with pytest.raises(PreflightError, match="tokenizers differ"):
        _check(cfg, f"model.path={model_dir}", "model.config=null")
    _tokenizer(model_dir, [f"w{i}" for i in range(8)])
    assert (
        _check(cfg, f"model.path={model_dir}", "model.config=null").tokenizer_dir
        == tmp / "data" / "tokenizer"
    )


def test_existing_checkpoints_need_resume(setup):
    tmp, cfg = setup
    (tmp / "out" / "checkpoints" / "global_step3").mkdir(parents=True)
    (tmp / "out" / "checkpoints" / "latest").write_text("global_step3")
    with pytest.raises(
        PreflightError, match=r"already holds checkpoints \(global_step3\); pass --resume"
    ):
        _check(cfg)
    _check(cfg, resume=True)


def _check_flags(cfg: Path, **flags):
    return check_run(load_config(cfg, RunConfig, []), **flags)


@pytest.mark.parametrize("files", [["global_step4/"], ["latest:global_step6"]])
def test_any_checkpoint_trace_needs_a_flag(setup, files):
    """A tag folder without `latest`, or a `latest` whose folder is gone, is a previous run too."""
    tmp, cfg = setup
    ckpt = tmp / "out" / "checkpoints"
    ckpt.mkdir(parents=True)
    for item in files:
        if item.endswith("/"):
            (ckpt / item).mkdir()
        else:
            name, text = item.split(":")
            (ckpt / name).write_text(text)
    with pytest.raises(PreflightError, match=r"already holds checkpoints .*--fresh to start over"):
        _check_flags(cfg, resume=False)
    _check_flags(cfg, resume=True)
    _check_flags(cfg, resume=False, fresh=True)
    with pytest.raises(PreflightError, match="pass one of them"):
        _check_flags(cfg, resume=True, fresh=True)


def test_resume_from_names_an_existing_tag(setup, capsys):
    tmp, cfg = setup
    (tmp / "out" / "checkpoints" / "global_step2").mkdir(parents=True)
    with pytest.raises(PreflightError, match=r"global_step9 does not exist .*: global_step2\)"):
        _check_flags(cfg, resume=False, resume_from="global_step9")
    assert main(["train", str(cfg), "--resume-from", "global_step9"]) == 2
    assert "--resume-from global_step9" in capsys.readouterr().err
    assert main(["train", str(cfg), "--resume", "--fresh"]) == 2
    assert not dist.is_initialized()


def test_a_damaged_metrics_line_is_named_before_resuming(setup):
    tmp, cfg = setup
    (tmp / "out").mkdir()
    (tmp / "out" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(PreflightError, match=r"metrics.jsonl, line 2: not a JSON object"):
        _check_flags(cfg, resume=True)
    (tmp / "out" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo')
    _check_flags(cfg, resume=True)  # a cut-off last line is removed by the trainer


def _read_only(folder: Path):
    """``folder`` made read-only: chmod for a normal user; for root (whom chmod does not stop), a
    read-only tmpfs mounted over it. Returns an undo function; skips when neither is possible."""
    import os
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {done.stderr!r}")
    return lambda: subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_dir_is_refused_before_any_process_group(setup, capsys):
    tmp, cfg = setup
    undo = _read_only(tmp / "out")
    try:
        assert main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"output_dir: cannot write in {tmp / 'out'}" in err and "writable" in err
        nested = load_config(cfg, RunConfig, [f"output_dir={tmp / 'out' / 'a' / 'b'}"])
        with pytest.raises(PreflightError, match=r"cannot write in .*out \(to create .*out/a/b"):
            check_run(nested, resume=False)
    finally:
        undo()
    assert not dist.is_initialized()


# ---- a previous run, an HF folder natscale did not write, inputs inside the run directory ------
@pytest.mark.parametrize("name", ["metrics.jsonl", "summary.json", "hf/"])
def test_a_previous_run_without_checkpoints_needs_a_flag(setup, name):
    """checkpoint.at_end=false, or a run killed before its first save: still a previous run."""
    from natscale.atomic import HF_EXPORT, write_marker

    tmp, cfg = setup
    out = tmp / "out"
    out.mkdir()
    if name.endswith("/"):
        (out / name).mkdir()
        (out / name / "config.json").write_text("{}")
        write_marker(out / name, HF_EXPORT)  # natscale's export of that run
    else:
        (out / name).write_text("{}\n")
    with pytest.raises(PreflightError, match=r"holds .* without checkpoints .* --fresh"):
        _check_flags(cfg, resume=False)
    if name == "metrics.jsonl":  # an attempt killed before its first save: --resume starts it
        _check_flags(cfg, resume=True)
    else:  # a finished run: --resume would start over and replace its files
        with pytest.raises(PreflightError, match=r"a finished run .*nothing to --resume from"):
            _check_flags(cfg, resume=True)
    _check_flags(cfg, resume=False, fresh=True)


def test_an_hf_folder_of_the_users_is_not_a_previous_run_and_fresh_leaves_it(setup):
    tmp, cfg = setup
    hf = tmp / "out" / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")  # no marker: the user's
    _check_flags(cfg, resume=False)  # export_hf=false (the fixture's): not touched, no refusal
    with pytest.raises(
        PreflightError, match=r"hf was not written by natscale .*--fresh would move"
    ):
        _check_flags(cfg, resume=False, fresh=True)
    assert sorted(p.name for p in hf.iterdir()) == ["config.json"]


def test_fresh_with_the_previous_runs_ds_config_is_refused_before_moving_anything(setup, capsys):
    """Reusing a run's resolved ds_config.json: --fresh moved it to previous-<time>/ with the rest
    of the run, then failed with a traceback (deepspeed.config not found), the run half-moved."""
    import json

    from natscale.config.ds_config import resolve_ds_config_path

    tmp, cfg = setup
    out = tmp / "out"
    (out / "checkpoints" / "global_step1").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("global_step1")
    (out / "metrics.jsonl").write_text("")
    shipped = resolve_ds_config_path(load_config(cfg, RunConfig, []).deepspeed.config)
    (out / "ds_config.json").write_text(json.dumps(json.loads(shipped.read_text())))
    before = sorted(p.name for p in out.iterdir())
    code = main(
        ["train", str(cfg), "--fresh", "--set", f"deepspeed.config={out / 'ds_config.json'}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "deepspeed.config:" in err and "--fresh would move it" in err, err
    assert sorted(p.name for p in out.iterdir()) == before and not dist.is_initialized()


def _hf_model(folder: Path) -> Path:
    write_model_config(folder)
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_an_hf_folder_natscale_did_not_write_is_refused_before_training(setup, capsys):
    from natscale.atomic import HF_EXPORT, write_marker

    tmp, cfg = setup
    hf = tmp / "out" / "hf"
    _hf_model(hf)
    (tmp / "out" / "metrics.jsonl").write_text("")
    before = sorted(p.name for p in hf.iterdir())
    assert main(["train", str(cfg), "--resume", "--set", "checkpoint.export_hf=true"]) == 2
    err = capsys.readouterr().err
    assert f"{hf} was not written by natscale" in err and "checkpoint.export_hf=false" in err
    assert sorted(p.name for p in hf.iterdir()) == before and not dist.is_initialized()
    _check_flags(cfg, resume=True)  # export_hf=false (the fixture's): hf is not touched
    (tmp / "out" / "checkpoints" / "global_step1").mkdir(parents=True)  # a run to resume
    write_marker(hf, HF_EXPORT)
    flags = {"resume": True}
    run = load_config(cfg, RunConfig, ["checkpoint.export_hf=true"])
    check_run(run, **flags)  # natscale's own export: replaced at the end
    (hf / "README.md").write_text("notes")
    with pytest.raises(PreflightError, match=r"holds what natscale did not write there \(README"):
        check_run(run, **flags)


def test_model_path_inside_the_run_directory(setup):
    """The export would replace the model the run reads; --fresh would move it away."""
    tmp, cfg = setup
    hf = _hf_model(tmp / "out" / "hf")
    run = load_config(
        cfg, RunConfig, ["model.config=null", f"model.path={hf}", "checkpoint.export_hf=true"]
    )
    with pytest.raises(
        PreflightError, match=r"model.path: .*hf is .*hf, and the export at the end"
    ):
        check_run(run, resume=True)
    with pytest.raises(PreflightError, match=r"model.path: .*--fresh would move it"):
        check_run(run, resume=False, fresh=True)
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["hf"]  # nothing moved


def test_an_empty_output_dir_is_refused(setup, capsys):
    _, cfg = setup
    assert main(["train", str(cfg), "--set", "output_dir="]) == 2
    assert "output_dir" in capsys.readouterr().err


def test_a_run_config_that_is_the_run_directorys_config_yaml(setup, capsys):
    tmp, cfg = setup
    own = tmp / "out" / "config.yaml"
    own.parent.mkdir()
    text = "# my notes\n" + cfg.read_text()
    own.write_text(text)
    assert main(["train", str(own)]) == 2
    assert "keep the run config outside the run directory" in capsys.readouterr().err
    assert own.read_text() == text
    import yaml

    run = load_config(own, RunConfig, [])
    own.write_text(yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False))  # as saved
    from natscale.train.preflight import check_config_location

    check_config_location(own, run)  # resuming from the saved config is fine
    # once a run has started there (it wrote config.yaml), --set changes are fine too
    changed = load_config(own, RunConfig, ["train.steps=99"])
    with pytest.raises(PreflightError, match="keep the run config outside"):
        check_config_location(own, changed)
    (tmp / "out" / "metrics.jsonl").write_text("")
    check_config_location(own, changed)


def test_resume_with_another_model_names_the_checkpoint_and_the_config(setup, capsys):
    """Bug 9: not a DeepSpeed size-mismatch traceback from the load."""
    tmp, cfg = setup
    out = tmp / "out"
    write_model_config(out / "model_config", tied=True)  # what the previous run trained
    (out / "checkpoints" / "global_step2").mkdir(parents=True)
    assert main(["train", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoints in {out / 'checkpoints'} were written by a model with " in err
    assert "tie_word_embeddings=True" in err and "tie_word_embeddings=False" in err
    assert f"model.config {tmp / 'model'}" in err and "Traceback" not in err
    write_model_config(out / "model_config")  # the same model: fine
    _check_flags(cfg, resume=True)


# ---- what the run rewrites at start: model_config/, config.yaml, ds_config.json ----------------
def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_model_config_folder_of_the_users_is_never_replaced(setup, capsys):
    """The run swaps in RUN_DIR/model_config at start: a model the user keeps there (weights and
    all) would be deleted."""
    tmp, cfg = setup
    mc = _hf_model(tmp / "out" / "model_config")
    before = _names(mc)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{mc} holds what natscale did not write there" in err
    assert "config.json" in err and "model.safetensors" in err and not dist.is_initialized()
    assert _names(mc) == before
    # as the run's model (model.path) too: refused before anything is written
    run = load_config(cfg, RunConfig, ["model.config=null", f"model.path={mc}"])
    with pytest.raises(PreflightError, match=r"model_config holds what natscale did not write"):
        check_run(run, resume=False)
    # an earlier run's (unmarked, from before the marker): config and tokenizer only are fine
    (mc / "model.safetensors").unlink()
    (tmp / "out" / "metrics.jsonl").write_text("")
    _check_flags(cfg, resume=True)
    (mc / "weights.bin").write_bytes(b"mine")
    with pytest.raises(PreflightError, match=r"did not write there \(weights.bin\)"):
        _check_flags(cfg, resume=True)
    assert (mc / "weights.bin").read_bytes() == b"mine"
    # --fresh moves it aside with the previous run's files (not deleted)
    _check_flags(cfg, resume=False, fresh=True)


def test_a_marked_model_config_may_be_replaced_unless_something_was_added(setup):
    from natscale.atomic import RUN_MODEL_CONFIG, write_marker

    tmp, cfg = setup
    mc = write_model_config(tmp / "out" / "model_config")
    write_marker(mc, RUN_MODEL_CONFIG)
    (tmp / "out" / "checkpoints" / "global_step1").mkdir(parents=True)
    _check_flags(cfg, resume=True)
    (mc / "notes.txt").write_text("mine")
    with pytest.raises(PreflightError, match=r"did not write there \(notes.txt\)"):
        _check_flags(cfg, resume=True)
    (mc / "notes.txt").unlink()
    shutil.rmtree(tmp / "out" / "checkpoints")
    # the marker alone says a run started here: its config.yaml and ds_config.json are its own
    (tmp / "out" / "ds_config.json").write_text("{}")
    (tmp / "out" / "config.yaml").write_text("output_dir: elsewhere\n")
    _check_flags(cfg, resume=False)


@pytest.mark.parametrize("name", ["ds_config.json", "config.yaml"])
def test_run_files_in_a_folder_where_no_run_started_are_refused(setup, capsys, name):
    """A ds_config.json or config.yaml the user keeps in output_dir would be overwritten."""
    tmp, cfg = setup
    own = tmp / "out" / name
    own.parent.mkdir()
    own.write_text('{"train_batch_size": 8}\n')
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{own} exists but no run has started in {tmp / 'out'}" in err
    assert own.read_text() == '{"train_batch_size": 8}\n' and not dist.is_initialized()
    (tmp / "out" / "metrics.jsonl").write_text("")  # a previous run's: rewritten on resume
    _check_flags(cfg, resume=True)


def test_a_config_yaml_holding_the_resolved_config_is_fine(setup):
    import yaml

    tmp, cfg = setup
    run = load_config(cfg, RunConfig, [])
    saved = tmp / "out" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False))
    check_run(run, resume=False)


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("data", r"output_dir: .*data is data.path \(.*data\); the run writes its checkpoints"),
        ("data/run", r"output_dir: .*data/run is inside data.path"),
        ("model", r"output_dir: .*model is model.config \(.*model\)"),
        ("prepared/run", r"output_dir: .*prepared/run is inside .*prepared, a `natscale prepare`"),
        ("export", r"output_dir: .*export is a Hugging Face export; .*outside it"),
    ],
)
def test_output_dir_among_the_inputs_or_in_an_output_is_refused(setup, capsys, out, needle):
    """e.g. output_dir and data.path swapped: the run would write into the prepared dataset."""
    from natscale.atomic import HF_EXPORT, PREPARED, write_marker

    tmp, cfg = setup
    for name, kind in (("prepared", PREPARED), ("export", HF_EXPORT)):
        (tmp / name).mkdir()
        write_marker(tmp / name, kind)
    before = {p: sorted(q.name for q in (tmp / p).iterdir()) for p in ("data", "model")}
    with pytest.raises(PreflightError, match=needle):
        _check(cfg, f"output_dir={tmp / out}")
    assert main(["train", str(cfg), "--set", f"output_dir={tmp / out}"]) == 2
    assert "choose an output_dir outside it" in capsys.readouterr().err
    assert before == {p: sorted(q.name for q in (tmp / p).iterdir()) for p in before}
    assert not (tmp / "data" / "run").exists() and not (tmp / "prepared" / "run").exists()


def test_a_run_directory_as_model_path_names_its_export(setup):
    # a new user's mistake: model.path=RUN (or RUN/checkpoints) instead of RUN/hf
    tmp, cfg = setup
    run = tmp / "prev"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "config.json").write_text("{}")
    (run / "checkpoints" / "global_step4").mkdir(parents=True)
    with pytest.raises(PreflightError, match=r"its HF export is .*prev/hf$"):
        _check(cfg, "model.config=null", f"model.path={run}")
    with pytest.raises(
        PreflightError, match=r"`natscale convert zero-to-hf .*prev/checkpoints OUT"
    ):
        _check(cfg, "model.config=null", f"model.path={run / 'checkpoints'}")


def test_an_attention_backend_the_model_lacks_is_refused(setup):
    import json

    tmp, cfg = setup
    config = json.loads((tmp / "model" / "config.json").read_text())
    (tmp / "gemma2").mkdir()
    (tmp / "gemma2" / "config.json").write_text(
        json.dumps({**config, "model_type": "gemma2", "head_dim": 8})
    )
    model = [f"model.config={tmp / 'gemma2'}", "model.loss=logits"]
    with pytest.raises(PreflightError, match="Gemma2ForCausalLM does not implement sdpa"):
        _check(cfg, *model, "model.attn_implementation=sdpa")
    _check(cfg, *model)  # auto: eager on CPU


def test_a_family_whose_packed_rows_leak_is_refused_and_an_unchecked_one_noted(setup):
    import json

    tmp, cfg = setup
    config = json.loads((tmp / "model" / "config.json").read_text())
    for model_type in ("gpt_oss", "glm4_moe_lite"):
        (tmp / model_type).mkdir()
        fields = {**config, "model_type": model_type, "head_dim": 8}
        (tmp / model_type / "config.json").write_text(json.dumps(fields))
    with pytest.raises(PreflightError, match="'gpt_oss' cannot be trained on packed rows"):
        _check(cfg, f"model.config={tmp / 'gpt_oss'}", "model.loss=logits")
    checks = _check(cfg, f"model.config={tmp / 'glm4_moe_lite'}")
    assert any(
        "'glm4_moe_lite' is not among the families natscale checks" in n for n in checks.notes
    )
    assert not any("not among the families" in n for n in _check(cfg).notes)  # llama: checked


def test_a_router_loss_for_a_model_without_one_is_refused(setup, capsys):
    tmp, cfg = setup
    assert main(["train", str(cfg), "--set", "model.router_aux_loss_coef=0.01"]) == 2
    err = capsys.readouterr().err
    assert "llama (LlamaForCausalLM) computes no router load-balancing loss" in err
    assert not (tmp / "out").exists() and not dist.is_initialized()
    _check(cfg, "model.router_aux_loss_coef=0")  # 0 (off) is fine for any model


def test_sparse_attention_is_refused_for_rows_longer_than_its_index_topk(setup):
    import json

    from tests.model.test_architectures import DSA

    tmp, cfg = setup
    base = json.loads((tmp / "model" / "config.json").read_text())
    for topk in (32, 64):  # the rows hold up to 64 tokens
        (tmp / f"dsa{topk}").mkdir()
        fields = {**base, **DSA, "model_type": "deepseek_v32", "index_topk": topk}
        (tmp / f"dsa{topk}" / "config.json").write_text(json.dumps(fields))
    with pytest.raises(
        PreflightError, match=r"index_topk=32 .* prepare the data with max_seq_len <= 32"
    ):
        _check(cfg, f"model.config={tmp / 'dsa32'}")
    _check(cfg, f"model.config={tmp / 'dsa64'}")


def test_a_multimodal_model_is_sized_by_its_text_config(setup):
    import json

    from tests.model.test_architectures import OWN_FIELDS

    tmp, cfg = setup
    (tmp / "gemma3").mkdir()
    fields = {"model_type": "gemma3", **OWN_FIELDS["gemma3"]}
    (tmp / "gemma3" / "config.json").write_text(json.dumps(fields))
    checks = _check(cfg, f"model.config={tmp / 'gemma3'}")
    text = OWN_FIELDS["gemma3"]["text_config"]
    assert (checks.vocab_size, checks.hidden_size) == (text["vocab_size"], text["hidden_size"])
    assert not any("not among the families" in n for n in checks.notes)


def test_a_family_refused_for_packed_rows_trains_on_rows_of_one_example(setup):
    import json

    from tests.model.test_architectures import LEAKING
    from tests.train.train_fixtures import pack

    tmp, cfg = setup
    (tmp / "qwen3_5").mkdir()
    fields = {"model_type": "qwen3_5_text", **LEAKING["qwen3_5_text"], "vocab_size": VOCAB}
    (tmp / "qwen3_5" / "config.json").write_text(json.dumps(fields))
    model = f"model.config={tmp / 'qwen3_5'}"
    with pytest.raises(PreflightError, match=r"holds packed rows.*pack\.algorithm: none"):
        _check(cfg, model)
    save_rows([pack([s], 64) for s in make_segments(6, seed=0)], tmp / "unpacked")
    _check(cfg, model, f"data.path={tmp / 'unpacked'}")
