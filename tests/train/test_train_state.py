"""Checkpoint bookkeeping and metrics helpers (no process group needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from natscale.checkpoint.layout import CheckpointDir
from natscale.checkpoint.save import _prune, _write_latest
from natscale.train.metrics import (
    FlopsModel,
    MetricsFileError,
    attended_sq,
    clean,
    read_metrics,
    truncate_after,
)


def _complete(tag: str) -> bool:
    """Pruning's completeness check, for empty tag folders standing for checkpoints."""
    return True


def test_latest_names_only_a_complete_tag(tmp_path: Path):
    assert CheckpointDir(tmp_path).read_latest() is None
    (tmp_path / "global_step4").mkdir()
    _write_latest(tmp_path, "global_step4")
    assert CheckpointDir(tmp_path).read_latest() == "global_step4"
    _write_latest(tmp_path, "global_step8")  # the tag directory is missing: not a checkpoint
    assert CheckpointDir(tmp_path).read_latest() is None
    assert not list(tmp_path.glob(".latest.*"))


def test_prune_keeps_the_newest(tmp_path: Path):
    for step in (2, 4, 10, 12, 6):
        (tmp_path / f"global_step{step}").mkdir()
    (tmp_path / "other").mkdir()
    assert sorted(_prune(tmp_path, 2, "global_step12", _complete)) == [
        "global_step2",
        "global_step4",
        "global_step6",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step10", "global_step12", "other"]


def test_prune_keeps_a_tag_holding_a_folder_it_did_not_write(tmp_path: Path, capsys):
    # `convert zero-to-hf CKPT CKPT/global_step2/hf` put an export inside a tag: pruning the tag
    # would delete it with no word
    for step in (2, 4, 6):
        (tmp_path / f"global_step{step}").mkdir()
        (tmp_path / f"global_step{step}" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (tmp_path / "global_step2" / "hf").mkdir()
    (tmp_path / "global_step2" / "hf" / "model.safetensors").write_bytes(b"weights")
    assert _prune(tmp_path, 1, "global_step6", _complete) == ["global_step4"]
    assert (tmp_path / "global_step2" / "hf" / "model.safetensors").read_bytes() == b"weights"
    err = capsys.readouterr().err
    assert "kept" in err and "global_step2" in err and "hf/" in err
    _prune(tmp_path, 1, "global_step6", _complete)  # said once
    assert capsys.readouterr().err == ""


def test_summary_rates_are_time_weighted():
    """The summary's MFU was the plain mean of the steps' MFUs (58.7% beside 0.00541 TFLOP/s of a
    0.01 peak): a slow step counted as much as a fast one."""
    from natscale.train.metrics import time_weighted

    steps = [
        {"step_time_s": 0.551, "mfu": 0.372, "tflops_per_gpu": 0.00372},
        {"step_time_s": 0.304, "mfu": 0.743, "tflops_per_gpu": 0.00743},
        {"step_time_s": 0.302, "mfu": 0.646, "tflops_per_gpu": 0.00646},
        {"step_time_s": 0.5, "mfu": None, "tflops_per_gpu": 0.001},
    ]
    flops = sum(s["mfu"] * s["step_time_s"] for s in steps[:3])  # in peak-seconds
    assert time_weighted(steps, "mfu") == pytest.approx(flops / (0.551 + 0.304 + 0.302))
    assert time_weighted(steps, "mfu") == pytest.approx(0.541, abs=1e-3)  # not 0.587, the mean
    assert time_weighted(steps[3:], "mfu") is None and time_weighted([], "mfu") is None
    assert time_weighted(steps, "tflops_per_gpu") == pytest.approx(
        (0.00372 * 0.551 + 0.00743 * 0.304 + 0.00646 * 0.302 + 0.001 * 0.5) / 1.657
    )


def test_metrics_truncate_and_clean(tmp_path: Path):
    lines = [
        json.dumps(clean({"step": s, "loss": math.nan if s == 2 else 1.0, "x": {"y": math.inf}}))
        for s in (1, 2, 3)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    truncate_after(tmp_path / "metrics.jsonl", 2)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["loss"] is None and records[0]["x"]["y"] is None


def test_flops_model_of_the_tiny_llama():
    from transformers import AutoConfig, AutoModelForCausalLM

    root = Path(__file__).resolve().parents[2]
    config = AutoConfig.from_pretrained(root / "examples" / "models" / "tiny-llama")
    model = AutoModelForCausalLM.from_config(config)
    flops = FlopsModel.from_model(model, config)
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    per_layer = (
        h * (config.num_attention_heads * config.head_dim) * 2
        + 2 * h * kv
        + 3 * h * config.intermediate_size
        + 2 * h
    )
    assert flops.body_params == layers * per_layer + h  # + the final norm
    assert flops.attn_dim == config.num_attention_heads * config.head_dim
    got = flops.step_flops(nonpad=10, trained=4, sum_sq_segment_len=50)
    assert got == 6 * flops.body_params * 10 + 6 * h * v * 4 + 6 * layers * flops.attn_dim * 50
    assert sum(p.numel() for p in model.parameters()) == flops.body_params + 2 * h * v


def test_a_cut_off_last_metrics_line_is_removed_on_resume_and_skipped_by_readers(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "loss": 0.')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert f"{path}: line 3 is cut off" in capsys.readouterr().err
    assert truncate_after(path, 5) == [
        f"{path}: line 3 is cut off (no newline: a write that was interrupted); removed"
    ]
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert truncate_after(path, 5) == []
    path.write_text('{"step": 1}\n{"step": 2, "lo\n')  # killed after a newline made it? still cut
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_a_bad_metrics_line_before_the_last_names_file_and_line(tmp_path, capsys):
    from natscale.cli.main import main

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl, line 2: not a JSON object"):
        read_metrics(tmp_path)
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl, line 2: not a JSON object" in capsys.readouterr().err


def test_plot_skips_a_cut_off_last_line(tmp_path, capsys):
    from natscale.cli.main import main

    rec = {"step": 1, "loss": 2.0, "loss_by_class": {"a": 2.0}, "tokens_per_s_per_gpu": {}}
    lines = [json.dumps({**rec, "step": s}) for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "lo')
    assert main(["plot", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "line 3 is cut off" in captured.err and "loss.png" in captured.out


def test_files_written_through_a_temp_path_follow_the_umask(tmp_path):
    """latest, config.yaml / prepare_config.yaml (save_config), the synthetic data files and
    the HF export (safetensors writes 0600) get 0666 & ~umask, like any other file."""
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from natscale.agent.scripted.dataset import generate, write_dataset
    from natscale.checkpoint.hf_export import _swap_in
    from natscale.config.loader import save_config
    from natscale.config.run import CheckpointSection

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    old = os.umask(0o022)
    try:
        _write_latest(tmp_path, "global_step4")
        save_config(CheckpointSection(), tmp_path / "config.yaml")
        written = write_dataset(generate(seed=0, num_questions=2), tmp_path / "synthetic")
        export = tmp_path / "hf.tmp"
        export.mkdir()
        save_file({"w": torch.zeros(2)}, str(export / "model.safetensors"))
        assert mode(export / "model.safetensors") == 0o600  # what safetensors does
        _swap_in(export, tmp_path / "hf")
        files = [tmp_path / "latest", tmp_path / "config.yaml", *written]
        files.append(tmp_path / "hf" / "model.safetensors")
        assert {str(p): mode(p) for p in files} == {str(p): 0o644 for p in files}
        assert mode(tmp_path / "hf") == 0o755
        os.umask(0o027)
        save_config(CheckpointSection(), tmp_path / "config.yaml")
        assert mode(tmp_path / "config.yaml") == 0o640
    finally:
        os.umask(old)


def test_ctrl_c_is_handled_like_sigterm_and_a_later_second_one_aborts():
    """Bug 6: SIGINT asks for a checkpoint at the step boundary, as SIGTERM does."""
    import os
    import signal

    from natscale.train.trainer import StopSignal

    before = signal.getsignal(signal.SIGINT)
    stop = StopSignal()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received and stop.name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C passed on by a launcher: ignored
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.name == "SIGINT"
        stop._first_at -= StopSignal.AGAIN_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_during_the_last_step_ends_the_run_as_finished():
    """A stop during the run's last step: the run ended there anyway, so it is finished (and
    exports), not stopped by the signal (which skipped the export for good)."""
    from natscale.train.trainer import end_reason

    assert end_reason(6, 6, 6, "SIGTERM") == "finished"
    assert end_reason(4, 4, 6, "SIGINT") == "stop_after_steps"
    assert end_reason(3, 6, 6, "SIGTERM") == "SIGTERM"
    assert end_reason(3, 4, 6, "SIGINT") == "SIGINT"
    assert end_reason(6, 6, 6, None) == "finished"
    assert end_reason(4, 4, 6, None) == "stop_after_steps"


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"loss": 2.0}, "line 2: 'step' is None, not an integer"),
        ({"step": 2, "loss_by_class": None}, None),  # null: plotted without classes
        ({"step": 2, "loss": "x"}, "line 2: 'loss' is 'x', not a number"),
        ({"step": 2, "loss_by_class": ["a"]}, "line 2: 'loss_by_class' is ['a'], not an object"),
    ],
)
def test_plot_names_the_file_and_line_of_a_bad_record(tmp_path, capsys, record, needle):
    from natscale.cli.main import main

    good = {"step": 1, "loss": 2.0, "loss_by_class": {"a": 2.0}, "tokens_per_s_per_gpu": {}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    code = main(["plot", str(tmp_path)])
    err = capsys.readouterr().err
    assert (code, "Traceback" in err) == ((0, False) if needle is None else (2, False))
    if needle is not None:
        assert f"{tmp_path / 'metrics.jsonl'}, {needle}" in err


def test_plot_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    from natscale.cli.main import main

    assert main(["plot", str(tmp_path)]) == 2
    assert "is not a `natscale train` run directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "trian")]) == 2  # a typo
    assert f"{tmp_path / 'trian'} does not exist; give the output_dir" in capsys.readouterr().err
    assert not (tmp_path / "trian").exists()


def test_an_interrupted_export_leaves_no_temp_folder(tmp_path):
    """The export writes in a hidden `.NAME.tmp`, removed when it is interrupted (Ctrl-C)."""
    from types import SimpleNamespace

    from natscale.checkpoint.hf_export import write_model_config

    def interrupted(path: str) -> None:
        (tmp_path / path / "config.json").write_text("{}")
        raise KeyboardInterrupt

    config = SimpleNamespace(use_cache=False, save_pretrained=interrupted)
    model = SimpleNamespace(config=config, generation_config=None)
    (tmp_path / "model_config").mkdir()
    (tmp_path / "model_config" / "config.json").write_text('{"old": 1}')
    with pytest.raises(KeyboardInterrupt):
        write_model_config(model, tmp_path / "model_config", use_cache=True, tokenizer_dir=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_config"]
    assert (tmp_path / "model_config" / "config.json").read_text() == '{"old": 1}'


def test_plot_out_never_replaces_a_png_it_did_not_write(tmp_path, capsys):
    """`plot --out DIR` replaces only its own loss.png / throughput.png (a PNG text chunk says
    natscale wrote them); RUN_DIR/plots is the run's own."""
    from natscale.cli.main import main

    rec = {"step": 1, "loss": 2.0, "loss_by_class": {"a": 2.0}, "tokens_per_s_per_gpu": {}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
    out = tmp_path / "figures"
    out.mkdir()
    (out / "loss.png").write_bytes(b"my figure")
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} already holds loss.png, which natscale plot did not write" in err
    assert (out / "loss.png").read_bytes() == b"my figure"
    assert sorted(p.name for p in out.iterdir()) == ["loss.png"]  # nothing half-written
    (out / "loss.png").unlink()
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 0
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 0  # its own PNGs: replaced
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "throughput.png"]
    import matplotlib.pyplot as plt

    plt.figure().savefig(out / "throughput.png")  # a real PNG, not natscale's
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 2
    assert "already holds throughput.png" in capsys.readouterr().err
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "loss.png").write_bytes(b"old")  # the run's own folder: replaced
    assert main(["plot", str(tmp_path)]) == 0
    assert (plots / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_flops_model_of_a_mixture_of_experts_counts_the_experts_a_token_runs_through():
    """Qwen3-MoE: 8 experts, 2 per token, and Qwen2-MoE's shared expert (always run). Counting
    all experts would state a model FLOP rate (and MFU) 8/2 times too high in the expert layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = {"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2}
    dims |= {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
    moe = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
    for model_type, extra in (
        ("qwen3_moe", {}),
        ("qwen2_moe", {"shared_expert_intermediate_size": 24}),
    ):
        config = AutoConfig.for_model(model_type, **dims, **moe, **extra)
        model = AutoModelForCausalLM.from_config(config)
        flops = FlopsModel.from_model(model, config)
        h, layers = config.hidden_size, config.num_hidden_layers
        every_expert = layers * 8 * 3 * h * 16  # gate, up and down of each expert
        total_body = sum(p.numel() for p in model.parameters()) - 2 * h * config.vocab_size
        assert flops.body_params == total_body - every_expert + every_expert * 2 // 8, model_type
    dense = AutoConfig.for_model("llama", **dims)
    assert FlopsModel.from_model(AutoModelForCausalLM.from_config(dense), dense).body_params == (
        sum(p.numel() for p in AutoModelForCausalLM.from_config(dense).parameters()) - 2 * 32 * 96
    )


def test_flops_model_of_a_multimodal_model_counts_its_language_model():
    """Gemma 3 (4B and up) is a multimodal model: its sizes live in ``text_config`` and its
    vision tower does not run on the text natscale trains."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.model.test_architectures import OWN_FIELDS

    config = AutoConfig.for_model("gemma3", **OWN_FIELDS["gemma3"])
    model = AutoModelForCausalLM.from_config(config)
    flops = FlopsModel.from_model(model, config)
    text = config.text_config
    assert (flops.hidden_size, flops.vocab_size) == (text.hidden_size, text.vocab_size)
    decoder = model.get_decoder()
    embed = decoder.get_input_embeddings().weight.numel()
    assert flops.body_params == sum(p.numel() for p in decoder.parameters()) - embed
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision" in n)
    assert vision > 0 and flops.body_params < sum(p.numel() for p in model.parameters()) - vision


def _measured_attention_flops(model, length: int) -> int:
    """The forward FLOPs of QK^T and AV of one sequence, counted by torch (eager attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(4, model.config.vocab_size, (1, length))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    counts = counter.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items() if "bmm" in str(k) or "attention" in str(k))


def test_flops_model_of_multi_head_latent_attention_counts_its_query_and_value_widths():
    """DeepSeek-V3's head_dim is the rope part of a query alone (16 here): QK^T runs over
    nope + rope = 48 and AV over v_head_dim = 32, so MFU read 2.5 times too little attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "deepseek_v3", hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16,
        v_head_dim=32, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1,
        n_group=1, topk_group=1, attn_implementation="eager",
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    flops = FlopsModel.from_model(model, config)
    assert flops.attn_dim == 4 * (48 + 32) / 2
    length = 64  # the forward over the full square: 4 * layers * d_attn * L^2 (the causal half, x3)
    assert _measured_attention_flops(model, length) == 4 * 2 * flops.attn_dim * length**2


def test_attended_sq_counts_the_pairs_a_windowed_layer_computes():
    lengths = np.array([3, 10])
    assert attended_sq(lengths, "full", None) == 9 + 100
    assert attended_sq(lengths, "sliding", 4) == 9 + (2 * 10 * 4 - 16)  # 4 full rows, then 4 each
    assert attended_sq(lengths, "sliding", 10) == 9 + 100  # a window as long as the segment
    assert attended_sq(lengths, "chunked", 4) == 9 + (16 + 16 + 4)  # chunks of 4, 4 and 2


def test_flops_model_of_sliding_window_layers():
    """Gemma 3: 5 of every 6 layers attend within a window; counting their full L^2 overstated
    MFU (by 10% at 8k-token segments with a 1k window)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = {"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 7, "head_dim": 8}
    dims |= {"num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 4}
    config = AutoConfig.for_model("gemma3_text", **dims)
    assert config.layer_types.count("sliding_attention") == 6
    flops = FlopsModel.from_model(AutoModelForCausalLM.from_config(config), config)
    assert flops.attn_layers == (("full", None, 1, 1), ("sliding", 4, 6, 1))
    lengths = np.array([3, 10])
    assert flops.layer_sum_sq(lengths) == 1 * (9 + 100) + 6 * (9 + 64)
    got = flops.step_flops(
        nonpad=13, trained=5, sum_sq_segment_len=109, layer_sum_sq=1 * 109 + 6 * 73
    )
    assert got < flops.step_flops(nonpad=13, trained=5, sum_sq_segment_len=109)
    mistral = AutoConfig.for_model("mistral", **dims)  # no layer_types: every layer slides
    model = AutoModelForCausalLM.from_config(mistral)
    assert FlopsModel.from_model(model, mistral).attn_layers == (("sliding", 4, 7, 1),)
    llama = AutoConfig.for_model(
        "llama", **{k: v for k, v in dims.items() if k != "sliding_window"}
    )
    plain = FlopsModel.from_model(AutoModelForCausalLM.from_config(llama), llama)
    assert plain.layer_sum_sq(lengths) == 7 * 109  # every layer full, as step_flops assumes


def test_flops_model_of_layers_whose_head_size_differs():
    """Gemma 4: a sliding layer's heads are head_dim wide, a full layer's global_head_dim
    (256 and 512 in the released models); transformers 5 keeps them in per_layer_config and
    reading config.head_dim raised, so `natscale train` crashed on every Gemma 4 model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "gemma4_text", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16,
        sliding_window=4, vocab_size_per_layer_input=96, hidden_size_per_layer_input=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        attn_implementation="eager",
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    flops = FlopsModel.from_model(model, config)
    # d_attn 4 * 8 = 32 in a sliding layer, 4 * 16 = 64 (twice the unit) in the full one
    assert flops.attn_dim == 32
    assert flops.attn_layers == (("full", None, 1, 2), ("sliding", 4, 2, 1))
    lengths = np.array([3, 10])
    assert flops.layer_sum_sq(lengths) == 2 * (9 + 100) + 2 * (9 + 64)
    # eager attention computes every layer's full square (the window is a mask): torch's count
    # of QK^T and AV is 4 * L^2 * (the sum of the layers' d_attn)
    length = 16
    width = sum(count * weight for _, _, count, weight in flops.attn_layers) * flops.attn_dim
    assert width == 32 + 32 + 64
    assert _measured_attention_flops(model, length) == 4 * width * length**2


def test_flops_model_reads_each_familys_names_for_its_experts():
    """Aria names its experts moe_topk / moe_num_experts and Gemma 4 top_k_experts / num_experts:
    neither was read, so every expert counted and MFU read up to 4x too high (2 of 8 here)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from natscale.train.metrics import routed_expert_fraction

    dims = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    dims |= {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
    gemma4 = {"vocab_size_per_layer_input": 96, "hidden_size_per_layer_input": 8}
    for model_type, extra in (
        ("aria_text", {"moe_num_experts": 8, "moe_topk": 2, "moe_intermediate_size": 16}),
        (
            "gemma4_text",
            {**gemma4, "enable_moe_block": True, "num_experts": 8, "top_k_experts": 2,
             "moe_intermediate_size": 16, "global_head_dim": 8},
        ),
    ):  # fmt: skip
        config = AutoConfig.for_model(model_type, **dims, **extra)
        assert routed_expert_fraction(config) == 2 / 8, model_type
        model = AutoModelForCausalLM.from_config(config)
        decoder = model.get_decoder()
        experts = sum(p.numel() for n, p in decoder.named_parameters() if ".experts." in n)
        others = sum(p.numel() for n, p in decoder.named_parameters() if ".experts." not in n)
        # lookups, no multiply-add: the input embedding, and Gemma 4's per-layer embeddings
        embed = sum(
            m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Embedding)
        )
        per_layer = model_type == "gemma4_text"
        assert (embed > model.get_input_embeddings().weight.numel()) == per_layer, model_type
        assert experts > 0, model_type
        flops = FlopsModel.from_model(model, config)
        assert flops.body_params == others - embed + experts * 2 // 8, model_type


@pytest.mark.parametrize(
    "device, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA H200 NVL", 835),  # read the H200 SXM's 989: MFU 15% low
        ("NVIDIA GH200 480GB", 989),
        ("NVIDIA B200", 2250),
        ("NVIDIA GB200", 2500),  # read the B200's 2250
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_the_peak_of_a_device_is_its_most_specific_entry(device: str, tflops: int | None):
    from natscale.train.metrics import device_peak

    assert device_peak(device) == (tflops * 1e12 if tflops else None)


def test_every_peak_table_entry_is_reachable():
    """A device named exactly as an entry gets that entry, whatever the table's order."""
    from natscale.train.metrics import PEAK_BF16_FLOPS, device_peak

    for key, peak in PEAK_BF16_FLOPS:
        assert device_peak(f"NVIDIA {key}") == peak, key
