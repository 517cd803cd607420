"""The lookup contract for config.json, generation_config.json and the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natscale.checkpoint.hf_assets import find_assets, load_config, write_assets
from natscale.convert.errors import ConvertError

EXAMPLE_TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"


def layout(tmp_path: Path) -> tuple[Path, Path]:
    """<run>/checkpoints/<tag>/ — the trainer's run directory, empty of assets."""
    root = tmp_path / "run" / "checkpoints"
    tag_dir = root / "global_step4"
    tag_dir.mkdir(parents=True)
    return root, tag_dir


def put_config(folder: Path, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 16, "use_cache": False, **extra}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def put_tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_run_directory_hf_config_and_tokenizer_subfolders(tmp_path):
    root, tag_dir = layout(tmp_path)
    cfg = put_config(root.parent / "hf_config")
    tok = put_tokenizer(root.parent / "tokenizer")
    assets = find_assets(root, tag_dir)
    assert (assets.config_dir, assets.tokenizer_dir) == (cfg, tok)
    assert assets.searched == (tag_dir, root, root.parent)


@pytest.mark.parametrize("where", ["tag", "root", "root_hf_config"])
def test_closer_places_win_over_the_run_directory(tmp_path, where):
    root, tag_dir = layout(tmp_path)
    put_config(root.parent)
    folder = {"tag": tag_dir, "root": root, "root_hf_config": root / "hf_config"}[where]
    expected = put_config(folder)
    assert find_assets(root, tag_dir).config_dir == expected


def test_trainer_model_config_folder_holds_config_and_tokenizer(tmp_path):
    root, tag_dir = layout(tmp_path)
    folder = put_tokenizer(put_config(root.parent / "model_config"))
    assets = find_assets(root, tag_dir)
    assert (assets.config_dir, assets.tokenizer_dir) == (folder, folder)


def test_config_dir_flag_wins_and_tokenizer_falls_back(tmp_path):
    root, tag_dir = layout(tmp_path)
    put_config(root)
    given = put_config(tmp_path / "elsewhere")
    tok = put_tokenizer(root / "tokenizer")
    assets = find_assets(root, tag_dir, given)
    assert (assets.config_dir, assets.tokenizer_dir) == (given, tok)


def test_missing_config_lists_every_place(tmp_path):
    root, tag_dir = layout(tmp_path)
    with pytest.raises(ConvertError) as err:
        find_assets(root, tag_dir, tmp_path)
    msg = str(err.value)
    for folder in (tmp_path, tag_dir, root, root.parent):
        for sub in ("", "hf_config", "model_config"):
            assert str(folder / sub / "config.json") in msg
    assert "--config-dir" in msg


def test_missing_config_dir_flag(tmp_path):
    root, tag_dir = layout(tmp_path)
    with pytest.raises(ConvertError, match=r"--config-dir .* does not exist"):
        find_assets(root, tag_dir, tmp_path / "nope")


def test_write_assets_keeps_generation_config_and_copies_tokenizer(tmp_path):
    import torch
    from transformers import AutoConfig

    root, tag_dir = layout(tmp_path)
    cfg_dir = put_config(root.parent / "hf_config")
    (cfg_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": 7, "top_p": 0.5}))
    put_tokenizer(root.parent)
    assets = find_assets(root, tag_dir)
    out = tmp_path / "out"
    out.mkdir()
    written = write_assets(assets, AutoConfig.from_pretrained(cfg_dir), out, torch.bfloat16)
    assert set(written) == {"config.json", "generation_config.json", "tokenizer_config.json",
                            "tokenizer.json"}  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["use_cache"] is False  # as found
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["top_p"]) == (7, 0.5)


def test_write_assets_copies_the_whole_tokenizer_and_nothing_else(tmp_path):
    """Named chat templates (additional_chat_templates/) and vocabulary files of any name (e.g.
    gpt_neox_japanese's emoji.json) come along; weights, run files and other folders do not."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    root, tag_dir = layout(tmp_path)
    mc = put_config(root.parent / "model_config")
    tok = AutoTokenizer.from_pretrained(EXAMPLE_TOKENIZER)
    tok.chat_template = {"default": "{{ 'DEFAULT' }}", "tool_use": "{{ 'TOOLS' }}"}
    tok.save_pretrained(mc)
    (mc / "emoji.json").write_text('{"emoji": {}}')
    (mc / ".natscale-output").write_text('{"kind": "model-config"}')
    (mc / "model.safetensors").write_bytes(b"weights")
    (mc / "zero_to_fp32.py").write_text("")
    (mc / "checkpoints").mkdir()
    assets = find_assets(root, tag_dir)
    assert assets.tokenizer_dir == mc
    out = tmp_path / "out"
    out.mkdir()
    written = write_assets(assets, AutoConfig.from_pretrained(mc), out, torch.bfloat16)
    assert "additional_chat_templates" in written and "emoji.json" in written
    assert (out / "emoji.json").read_text() == '{"emoji": {}}'
    names = sorted(p.name for p in out.iterdir())
    for junk in (".natscale-output", "model.safetensors", "zero_to_fp32.py", "checkpoints"):
        assert junk not in names
    assert sorted(written) == names
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    got = AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=tools, tokenize=False
    )
    assert got == "TOOLS"  # the named template, as from the source folder


def test_tokenizer_at_the_top_of_a_run_directory_brings_no_run_files(tmp_path):
    from natscale.checkpoint.hf_assets import tokenizer_entries

    root, tag_dir = layout(tmp_path)
    run = put_tokenizer(put_config(root.parent))
    for name in ("metrics.jsonl", "summary.json", "config.yaml", "ds_config.json", "README.md"):
        (run / name).write_text("{}")
    (run / "vocab.txt").write_text("a\n")
    (root / "latest").write_text("global_step4")
    assert find_assets(root, tag_dir).tokenizer_dir == run
    assert [p.name for p in tokenizer_entries(run)] == [
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"]  # fmt: skip


@pytest.mark.parametrize(
    ("cwd", "arg", "root"),
    [("run", "checkpoints", "checkpoints"), ("run/checkpoints", ".", "."),
     ("run/checkpoints", "global_step4", "."), ("run/checkpoints/global_step4", ".", None),
     ("run/checkpoints/global_step4/sub", "..", None)],
)  # fmt: skip
def test_a_relative_ckpt_dir_still_searches_the_run_directory(
    tmp_path, monkeypatch, cwd, arg, root
):
    """`.` (or a bare tag) given from inside the checkpoint folder: CKPT_DIR/.. is the run
    directory, not `.` again, and `.` given from inside a tag folder names that tag."""
    from natscale.checkpoint.zero_files import resolve_tag

    ckpts, tag_dir = layout(tmp_path)
    (tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    (tag_dir / "sub").mkdir()
    if root is not None:  # a folder holding `latest` (else: the tag folder itself is given)
        (ckpts / "latest").write_text("global_step4")
    mc = put_tokenizer(put_config(ckpts.parent / "model_config"))
    monkeypatch.chdir(tmp_path / cwd)
    got_root, tag, got_tag_dir = resolve_tag(Path(arg), None)
    assert tag == "global_step4" and got_tag_dir.resolve() == tag_dir.resolve()
    if root is not None:
        assert got_root == Path(root)  # as typed
    assets = find_assets(got_root, got_tag_dir)
    assert assets.config_dir.resolve() == assets.tokenizer_dir.resolve() == mc.resolve()


def test_a_wrongly_typed_config_field_is_a_convert_error(tmp_path):
    # transformers' StrictDataclassFieldValidationError went through as a traceback
    root, tag_dir = layout(tmp_path)
    put_config(tag_dir, vocab_size="2048")
    with pytest.raises(ConvertError, match="Field 'vocab_size' expected int") as err:
        load_config(find_assets(root, tag_dir))
    assert str(tag_dir / "config.json") in str(err.value)
