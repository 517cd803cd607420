"""`natscale train` end to end on 2 CPU ranks (ZeRO-3, fp32, tiny Llama).

One 2-rank run of the example tiny Llama with tied embeddings on a sample of the example data
(through `natscale prepare`) serves several checks: the loss falls, per-class losses are logged,
the golden loss file, checkpoints, the HF export and `natscale plot`. A second run is stopped by
SIGTERM and resumed; together they must reproduce the first bit for bit. The runs go through the
multi-process harness under different launchers: torchrun, mpirun, the deepspeed launcher, two
no-ssh "nodes", and a single process.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from natscale.train.metrics import read_metrics
from tests.mp.harness import RunResult, assert_ok, run_distributed
from tests.train.train_fixtures import (
    REPO,
    TAG,
    VOCAB,
    make_segments,
    pack_greedy,
    save_rows,
    signal_ranks,
    write_model_config,
    write_run_config,
)

pytestmark = pytest.mark.multiproc
GOLDEN = Path(__file__).parent / "golden" / "example_tied_2rank_fp32.json"
TIED_LLAMA = REPO / "examples" / "models" / "tiny-llama-tied" / "config.json"
STEPS = 16


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A seeded sample of the example trajectories, prepared into 512-token rows."""
    from natscale.config.loader import load_config
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    base = tmp_path_factory.mktemp("train_mp")
    overrides = [
        "pack.max_seq_len=512",
        "num_proc=1",
        "strategy.counts={success: 24, failure: 36}",
    ]
    config = load_config(REPO / "examples/configs/prepare_math.yaml", PrepareConfig, overrides)
    prepare(config, base / "data", progress=False)
    return base


def _config(work: Path, name: str, **sections) -> Path:
    return write_run_config(
        work / f"{name}.yaml",
        data_dir=work / "data",
        model_config=TIED_LLAMA,
        out=work / name,
        **{
            "train": {"steps": STEPS, "grad_accum": 2},
            "checkpoint": {"every_steps": 4, "keep_last": 2, "export_hf": True},
            "logging": {"tensorboard": True, "progress_bar": True},
            **sections,
        },
    )


@pytest.fixture(scope="module")
def full_run(work: Path) -> Path:
    cfg = _config(work, "full")
    result = run_distributed(["train", str(cfg)], launcher="torchrun", log_dir=work / "logs")
    assert_ok(result)
    assert f"train: finished at step {STEPS}/{STEPS}" in result.rank_logs[0]
    assert "train: finished" not in result.rank_logs[1]  # the summary is rank 0's
    assert result.shm_leftovers == []
    return work / "full"


def _log(result: RunResult) -> str:
    return result.format_logs(max_lines=60)


def test_loss_falls_and_per_class_losses_are_logged(full_run: Path):
    records = read_metrics(full_run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in records]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0, losses
    assert records[-1]["epoch"] > 1  # the sample is smaller than the run: a second shuffled epoch
    for r in records:
        assert set(r["loss_by_class"]) == {"success", "failure"}
        assert set(r["tokens_per_s_per_gpu"]) == {"slot", "nonpad", "trained"}
        assert r["tokens"]["slot"] >= r["tokens"]["nonpad"] >= r["tokens"]["trained"] > 0
        # the total is the trained-token mean of both classes' NLL (all segment weights are 1)
        num = sum(
            r["loss_by_class"][c] * r["trained_tokens_by_class"][c]
            for c in ("success", "failure")
            if r["trained_tokens_by_class"][c]
        )
        assert num / r["tokens"]["trained"] == pytest.approx(r["loss"], rel=1e-5)
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["reason"] == "finished" and summary["nonfinite_steps"] == 0
    assert list((full_run / "tensorboard").glob("events.out.tfevents.*"))


def test_golden_losses(full_run: Path):
    losses = [r["loss"] for r in read_metrics(full_run)]
    if os.environ.get("NATSCALE_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"steps": STEPS, "losses": losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["losses"]
    # CPU kernels differ slightly between machines; a refactor that changes the maths does not
    assert losses == pytest.approx(golden, rel=2e-5)


def test_checkpoints_and_hf_export(full_run: Path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ckpt = full_run / "checkpoints"
    assert (ckpt / "latest").read_text() == "global_step16"
    assert sorted(p.name for p in ckpt.glob("global_step*")) == ["global_step12", "global_step16"]
    for d in ("model_config", "hf"):  # the prepared data's tokenizer travels with the model
        assert (full_run / d / "config.json").is_file() and (
            full_run / d / "tokenizer.json"
        ).is_file()
    exported = load_file(full_run / "hf" / "model.safetensors")
    fp32 = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    for name, tensor in exported.items():  # fp32 training: the 16-bit gather is the fp32 state
        assert torch.equal(tensor, fp32[name]), name
    model = AutoModelForCausalLM.from_pretrained(full_run / "hf")
    source = json.loads(TIED_LLAMA.read_text())
    assert model.config.tie_word_embeddings and model.config.use_cache == source["use_cache"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.embed_tokens.weight, fp32["model.embed_tokens.weight"])


def test_hf_export_is_marked_so_convert_may_overwrite_it(full_run: Path, tmp_path: Path):
    import shutil

    from natscale.atomic import read_marker
    from natscale.checkpoint.zero_to_hf import convert_zero_to_hf
    from natscale.convert.errors import ConvertError

    assert read_marker(full_run / "hf") == "hf-export"
    copy = tmp_path / "hf"
    shutil.copytree(full_run / "hf", copy)  # the shared run stays as it is
    convert_zero_to_hf(full_run / "checkpoints", copy, overwrite=True, progress=False)
    assert read_marker(copy) == "hf-export" and (copy / "model.safetensors").is_file()
    with pytest.raises(ConvertError, match="holds an input of this command"):
        convert_zero_to_hf(full_run / "checkpoints", full_run, overwrite=True, progress=False)
    assert (full_run / "checkpoints" / "latest").read_text() == "global_step16"


def test_plot(full_run: Path, tmp_path: Path):
    from natscale.cli.main import main

    assert main(["plot", str(full_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "throughput.png").stat().st_size > 1000


def test_sigterm_saves_and_resume_is_exact(work: Path, full_run: Path):
    """SIGTERM to every rank mid-run (mpirun): checkpoint, exit 0; resume (deepspeed launcher)."""
    args = ["train", str(_config(work, "stopped"))]
    metrics = work / "stopped" / "metrics.jsonl"
    signalled: list[int] = []
    # a tag of this run alone: another test session on the machine must not signal our ranks
    tag = f"stopped-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def preempt() -> None:  # as SLURM does: every task gets the signal
        deadline = time.time() + 200
        while time.time() < deadline and not signalled:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                signalled.append(signal_ranks(tag, signal.SIGTERM))
            time.sleep(0.05)

    watcher = threading.Thread(target=preempt, daemon=True)
    watcher.start()
    result = run_distributed(args, launcher="mpirun", env={TAG: tag}, log_dir=work / "logs")
    watcher.join()
    assert signalled == [2], _log(result)
    assert_ok(result)
    stopped = read_metrics(work / "stopped")
    k = stopped[-1]["step"]
    assert 2 <= k < STEPS
    assert (work / "stopped" / "checkpoints" / "latest").read_text() == f"global_step{k}"
    assert json.loads((work / "stopped" / "summary.json").read_text())["reason"] == "SIGTERM"
    assert not (work / "stopped" / "hf").exists()

    result = run_distributed([*args, "--resume"], launcher="deepspeed", log_dir=work / "logs")
    assert_ok(result)
    resumed = read_metrics(work / "stopped")
    full = read_metrics(full_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(full, resumed, strict=True):  # bitwise on CPU in fp32
        assert (a["loss"], a["grad_norm"], a["lr"]) == (b["loss"], b["grad_norm"], b["lr"]), a[
            "step"
        ]
        assert a["tokens_seen"] == b["tokens_seen"]
    a_hf = (full_run / "hf" / "model.safetensors").read_bytes()
    assert a_hf == (work / "stopped" / "hf" / "model.safetensors").read_bytes()
    summary = json.loads((work / "stopped" / "summary.json").read_text())
    assert summary["resumed_from"] == f"global_step{k}" and summary["steps_this_run"] == STEPS - k


def test_nonfinite_skip_stop_after_resume_then_abort(tmp_path: Path):
    """Step 2 is skipped; the run stops after step 3 (exit 0); resumed, step 5 is the second skip.

    One process, bf16 with activation checkpointing (the other runs are fp32).
    """
    segments = make_segments(80, seed=3)
    rows = pack_greedy(segments, 64)
    for bad in (1, 4):  # steps 2 and 5 (one row per step, no shuffle)
        rows[bad]["segment_weight"][0] = float("nan")
    save_rows(rows, tmp_path / "data")
    write_model_config(tmp_path / "untied", tied=False)
    cfg = write_run_config(
        tmp_path / "run.yaml",
        data_dir=tmp_path / "data",
        model_config=tmp_path / "untied",
        out=tmp_path / "run",
        model={"activation_checkpointing": True},
        data={"shuffle": False},
        train={"steps": 10, "max_nonfinite_steps": 1, "stop_after_steps": 3, "precision": "bf16"},
    )
    args = ["train", str(cfg)]
    logs = tmp_path / "logs"
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=logs)
    assert_ok(result)
    assert "warning: step 2 skipped, non-finite loss" in result.rank_logs[0]
    assert "train: stop_after_steps at step 3/10" in result.rank_logs[0]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "global_step3"

    args += ["--resume", "--set", "train.stop_after_steps=null"]
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=logs)
    assert result.returncodes == [1] and not result.timed_out, _log(result)
    assert (
        "2 steps had a non-finite loss or gradient (train.max_nonfinite_steps=1)"
        in (result.rank_logs[0])
    )
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["skipped"] for r in records] == [False, True, False, False, True]
    assert records[1]["loss"] is None and records[1]["nonfinite_steps"] == 1
    assert records[4]["nonfinite_steps"] == 2  # the count came back with the checkpoint
    assert all(r["loss"] is not None and r["grad_norm"] < 1e3 for r in records[2:4])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # the abort's
    assert (summary["status"], summary["reason"], summary["steps"]) == (
        "aborted",
        "nonfinite_steps",
        5,
    )
    assert summary["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "global_step3")
    ds_config = json.loads((tmp_path / "run" / "ds_config.json").read_text())
    assert ds_config["bf16"]["enabled"] is True


def test_gradients_agree_over_ranks_accumulation_and_packing(tmp_path: Path):
    """One step's gradients: 1 rank x accum 4 == 2 ranks x accum 2 == unpacked == plain HF.

    Tied embeddings (the head's weight is also the partitioned input embedding) and an untied
    lm_head (under ZeRO-3 with activation checkpointing on 2 ranks); token- and sequence-mean
    normalisation; segment weights differ by class.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.train.train_fixtures import pack

    segments = [
        (tokens, prompt, cls, 1.0 if cls == 0 else 0.5)
        for tokens, prompt, cls, _ in make_segments(40, seed=7)
    ]
    rows = pack_greedy(segments, 64)
    step_segments = segments[: sum(len(r["segment_class"]) for r in rows[:4])]
    save_rows(rows, tmp_path / "packed")
    save_rows([pack([s], len(s[0])) for s in segments], tmp_path / "unpacked")
    for tied in ("tied", "untied"):
        write_model_config(tmp_path / f"cfg_{tied}", tied=tied == "tied")
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(tmp_path / f"cfg_{tied}")
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / tied)
    torch.manual_seed(0)  # an MoE with its router loss on (the coefficient comes from --set)
    AutoModelForCausalLM.from_config(_moe_config()).save_pretrained(tmp_path / "moe")

    def probe_args(name: str, model: str, data: str, **train) -> list[str]:
        path = write_run_config(
            tmp_path / f"{name}.yaml",
            data_dir=tmp_path / data,
            out=tmp_path / name,
            model={
                "path": str(tmp_path / model),
                "config": None,
                "activation_checkpointing": train.pop("checkpointing", False),
                "router_aux_loss_coef": train.pop("router_aux_loss_coef", None),
            },
            data={"shuffle": False, "micro_batch_rows": train.pop("rows", 1)},
            train=train,
        )
        return [str(path), str(tmp_path / f"{name}.pt")]

    def moe_args(name: str, **train) -> list[str]:
        return probe_args(name, "moe", "packed", router_aux_loss_coef=MOE_COEF, **train)

    probe = str(Path(__file__).parent / "grad_probe.py")
    one = probe_args("tied_r1a4", "tied", "packed", grad_accum=4)
    one += probe_args("tied_unpacked", "tied", "unpacked", grad_accum=1, rows=len(step_segments))
    one += probe_args("untied_r1a4", "untied", "packed", grad_accum=4)
    one += probe_args("seq_r1a4", "tied", "packed", grad_accum=4, loss_norm="sequence")
    one += moe_args("moe_r1a2", grad_accum=2)
    logs = tmp_path / "logs"
    assert_ok(run_distributed(one, launcher="single", nprocs=1, entry=probe, log_dir=logs))
    two = probe_args("tied_r2a2", "tied", "packed", grad_accum=2)
    two += probe_args("untied_r2a2", "untied", "packed", grad_accum=2, checkpointing=True)
    two += probe_args("seq_r2a2", "tied", "packed", grad_accum=2, loss_norm="sequence")
    two += moe_args("moe_r2a1", grad_accum=1, checkpointing=True)
    # two no-ssh "nodes" of one rank each: the multi-node path
    assert_ok(run_distributed(two, launcher="nossh", nprocs=2, entry=probe, log_dir=logs))

    cases = [
        ("tied", "token", ("tied_r1a4", "tied_r2a2", "tied_unpacked")),
        ("untied", "token", ("untied_r1a4", "untied_r2a2")),
        ("tied", "sequence", ("seq_r1a4", "seq_r2a2")),
    ]
    for model, norm, names in cases:
        ref_loss, ref_grads = _reference_step(tmp_path / model, step_segments, norm)
        for name in names:
            got = torch.load(tmp_path / f"{name}.pt")
            assert got["loss"] == pytest.approx(ref_loss, rel=1e-6), name
            assert set(got["grads"]) == set(ref_grads), name
            for key, ref in ref_grads.items():
                torch.testing.assert_close(
                    got["grads"][key], ref, rtol=1e-4, atol=1e-6, msg=f"{name} {key}"
                )
    # the router loss is a mean over micro-batches: 1 x 2 and 2 x 1 hold the same two
    ref_loss, ref_grads = _reference_moe_step(tmp_path / "moe", rows[:2])
    for name in ("moe_r1a2", "moe_r2a1"):
        got = torch.load(tmp_path / f"{name}.pt")
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-6), name
        assert got["router_aux_loss"] > 0, name
        assert set(got["grads"]) == set(ref_grads), name
        for key, ref in ref_grads.items():
            torch.testing.assert_close(
                got["grads"][key], ref, rtol=1e-4, atol=1e-6, msg=f"{name} {key}"
            )


MOE_COEF = 0.5  # far above the usual 0.001-0.01, so a wrong router gradient shows


def _moe_config():
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "qwen3_moe", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        max_position_embeddings=256,
    )  # fmt: skip


def _reference_moe_step(model_dir: Path, rows) -> tuple[float, dict[str, torch.Tensor]]:
    """NLL sum / trained tokens + coef * the mean of the micro-batches' router losses, with
    NatCausalLM outside DeepSpeed (tests/model/test_router_aux.py checks it against HF)."""
    from transformers import AutoModelForCausalLM

    from natscale.model.nat_lm import NatCausalLM
    from natscale.train.batch import collate

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = NatCausalLM(lm, router_aux_loss_coef=MOE_COEF)
    nll, aux, trained = torch.zeros(()), torch.zeros(()), 0
    for row in rows:
        mb = collate([row], loss_norm="token", vocab_size=VOCAB)
        loss_sum, _, _, router_aux = model(**mb.model_inputs("cpu"))
        nll, aux, trained = nll + loss_sum, aux + router_aux, trained + mb.num_trained_tokens
    (nll / trained + MOE_COEF * aux / len(rows)).backward()
    return (nll / trained).item(), {n: p.grad.float() for n, p in model.named_parameters()}


def _reference_step(model_dir: Path, segments, norm: str) -> tuple[float, dict[str, torch.Tensor]]:
    """The objective computed directly: each segment alone through plain HF.

    token: sum of weight * NLL over all trained tokens / trained tokens;
    sequence: sum of weight * (segment's mean NLL) / segments.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for tokens, prompt, _, weight in segments:
        ids = torch.as_tensor(tokens)[None]
        logits = model(input_ids=ids, use_cache=False).logits[0].double()
        start = max(prompt - 1, 0)
        nll = torch.nn.functional.cross_entropy(
            logits[start:-1], ids[0, start + 1 :], reduction="sum"
        )
        n = len(tokens) - 1 - start
        total = total + weight * (nll if norm == "token" else nll / n)
        count += n if norm == "token" else 1
    loss = total / count
    loss.backward()
    return loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}
