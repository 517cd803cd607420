"""zero-to-hf against DeepSpeed's own zero_to_fp32 and against the trained model's weights."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from natscale.checkpoint.zero_to_hf import convert_zero_to_hf
from natscale.convert.errors import ConvertError

pytestmark = pytest.mark.multiproc
EXAMPLE_TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"


def read_export(out: Path) -> dict[str, torch.Tensor]:
    """All tensors of an exported folder, through its index when sharded."""
    index = out / "model.safetensors.index.json"
    if not index.exists():
        return load_file(out / "model.safetensors")
    weight_map = json.loads(index.read_text())["weight_map"]
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        part = load_file(out / shard)
        assert all(weight_map[k] == shard for k in part), f"{shard} holds tensors not in the index"
        tensors.update(part)
    assert set(tensors) == set(weight_map)
    return tensors


def deepspeed_fp32(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("stage", [2, 3])
def test_fp32_export_is_bit_identical_to_deepspeed(zero_run, tmp_path, world, stage):
    run = zero_run(world, f"z{stage}-fp32")
    # a small shard limit so the index and several shards are exercised
    res = convert_zero_to_hf(
        run / "checkpoints", tmp_path / "hf", dtype="fp32", max_shard_size="150KB", progress=False
    )
    assert (res.stage, res.world_size, res.tag) == (stage, world, "global_step2")
    assert len(res.shards) > 1
    got = read_export(tmp_path / "hf")
    want = deepspeed_fp32(run / "checkpoints")
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], tensor), name


def test_exported_logits_equal_the_trained_models(zero_run, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    run = zero_run(2, "z3-fp32")
    convert_zero_to_hf(run / "checkpoints", tmp_path / "hf", progress=False)
    exported, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", output_loading_info=True, attn_implementation="sdpa"
    )
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    assert exported.dtype == torch.float32  # auto dtype: the run trained in fp32
    trained = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(run / "hf_config"), attn_implementation="sdpa"
    )
    trained.load_state_dict(load_file(run / "reference.safetensors"), strict=True)
    ids = torch.randint(0, 2048, (3, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(exported, ids), logits(trained, ids))


@pytest.mark.parametrize("variant", ["z3-bf16-tied", "z2-bf16"])
def test_bf16_export_is_the_fp32_master_weights_rounded(zero_run, tmp_path, variant):
    from transformers import AutoModelForCausalLM

    run = zero_run(2, variant)
    res = convert_zero_to_hf(run / "checkpoints", tmp_path / "hf", progress=False)
    assert res.dtype == "bfloat16"  # auto: the run trained in bf16
    got = read_export(tmp_path / "hf")
    master = deepspeed_fp32(run / "checkpoints")
    trained = load_file(run / "reference.safetensors")  # the live bf16 parameters
    for name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, master[name].to(torch.bfloat16)), name
        assert torch.equal(tensor, trained[name]), name
        # within bf16 rounding of the fp32 master weights: relative error <= 2^-8
        err = (tensor.float() - master[name]).abs()
        assert bool((err <= master[name].abs() * 2**-8).all()), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.dtype == torch.bfloat16
    if variant.endswith("tied"):
        assert "lm_head.weight" not in got  # stored once, as save_pretrained does
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_cli_verify_tokenizer_and_config_lookup(zero_run, tmp_path):
    """The trainer's run directory: <run>/checkpoints and <run>/model_config (config + tokenizer)."""
    from transformers import AutoTokenizer, GenerationConfig

    run = tmp_path / "run"
    shutil.copytree(zero_run(2, "z3-bf16-tied"), run)
    (run / "hf_config").rename(run / "model_config")
    shutil.copytree(EXAMPLE_TOKENIZER, run / "model_config", dirs_exist_ok=True)
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "natscale.cli", "convert", "zero-to-hf", str(run / "checkpoints"),
         str(out), "--max-shard-size", "100KB", "--verify", "--quiet"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith(f"zero-to-hf: wrote {out} (")
    verify = next(line for line in lines if line.startswith("verify:"))
    assert "vs checkpoint weights in bfloat16: 0.000e+00" in verify and verify.endswith("OK")
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    assert GenerationConfig.from_pretrained(out).eos_token_id == 2
    text = "Thought: 17 * 23 = 391\nAction: finish[391]"
    assert AutoTokenizer.from_pretrained(out)(text) == AutoTokenizer.from_pretrained(
        EXAMPLE_TOKENIZER
    )(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # nothing left beside it


def test_tag_folder_itself_and_explicit_tag(zero_run, tmp_path):
    run = zero_run(2, "z2-fp32")
    a = convert_zero_to_hf(run / "checkpoints/global_step2", tmp_path / "a", progress=False)
    b = convert_zero_to_hf(run / "checkpoints", tmp_path / "b", tag="global_step2", progress=False)
    assert a.tag == b.tag == "global_step2" and a.config_dir == b.config_dir == run / "hf_config"
    assert (tmp_path / "a/model.safetensors").read_bytes() == (
        tmp_path / "b/model.safetensors"
    ).read_bytes()


def test_verify_with_the_tag_folder_as_ckpt_dir(zero_run, tmp_path):
    """`CKPT_DIR` may be the tag folder itself, --verify included (DeepSpeed's reader, which
    --verify uses, wants the folder above the tag: it was given the tag folder and failed, and
    the CLI said "nothing written" over a complete export)."""
    tag_dir = zero_run(1, "z2-fp32") / "checkpoints" / "global_step2"
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "natscale.cli", "convert", "zero-to-hf", str(tag_dir), str(out),
         "--verify", "--quiet"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "nothing written" not in proc.stderr
    verify = next(line for line in proc.stdout.splitlines() if line.startswith("verify:"))
    assert verify.endswith("OK") and (out / "model.safetensors").is_file()


def test_a_verify_that_cannot_run_keeps_the_export_and_says_so(zero_run, tmp_path, monkeypatch):
    from natscale.checkpoint import verify
    from natscale.cli.main import main

    def broken(*args, **kwargs):
        raise FileNotFoundError("no such file: reference")

    monkeypatch.setattr(verify, "verify_export", broken)
    out = tmp_path / "hf"
    ckpts = zero_run(1, "z2-fp32") / "checkpoints"
    code = main(["convert", "zero-to-hf", str(ckpts), str(out), "--verify", "--quiet"])
    assert code == 1 and (out / "model.safetensors").is_file()


def test_verify_of_a_model_without_sdpa(zero_run, tmp_path):
    """Gemma 2 has no sdpa in transformers: verify builds it with eager (was a ValueError)."""
    from natscale.cli.main import main

    out = tmp_path / "hf"
    ckpts = zero_run(1, "z3-fp32-gemma2") / "checkpoints"
    config = zero_run(1, "z3-fp32-gemma2") / "hf_config"
    args = ["convert", "zero-to-hf", str(ckpts), str(out), "--verify", "--quiet"]
    assert main([*args, "--config-dir", str(config)]) == 0
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("ckpt", ["checkpoints", "checkpoints/global_step2"])
def test_an_output_inside_the_checkpoint_folder_is_refused(zero_run, ckpt):
    """An export inside a tag folder was deleted, with no word, by the next save's pruning
    (checkpoint.keep_last); inside the checkpoint folder a --fresh run moves it aside."""
    checkpoints = zero_run(1, "z2-fp32") / "checkpoints"
    before = sorted(p.relative_to(checkpoints) for p in checkpoints.rglob("*"))
    for out in (checkpoints / "global_step2" / "hf", checkpoints / "hf"):
        with pytest.raises(ConvertError, match="inside the checkpoint folder"):
            convert_zero_to_hf(checkpoints.parent / ckpt, out, progress=False)
    assert sorted(p.relative_to(checkpoints) for p in checkpoints.rglob("*")) == before
