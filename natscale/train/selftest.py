"""Can this cluster / launcher setup train with ZeRO-3? Library half of ``natscale selftest``.

Every rank builds a tiny random-init causal LM (a built-in Llama config, or a user's config.json)
under ``HfDeepSpeedConfig`` so construction runs inside ``deepspeed.zero.Init``, trains it for a few
optimizer steps on seeded random tokens, and reports what it saw: its losses and how many
parameter elements it holds locally against the model's total. Nothing is downloaded.

Under ZeRO-3 each rank holds ``ceil(numel / world_size)`` elements of every parameter
(``p.ds_tensor``; ``p.ds_numel`` is the full size), so "partitioned" means every rank holds
exactly that share and no rank holds the whole model (with one rank the share is everything).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from natscale.train.dist import DistInfo

# 147,776 parameters: small enough for 2 CPU ranks in seconds, every matrix splits evenly in two.
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "use_cache": False,
}


@dataclass(frozen=True)
class SelftestOptions:
    steps: int = 5
    zero_stage: int = 3
    bf16: bool = False
    model_config: str | None = None  # a directory with config.json, or a config JSON file
    seq_len: int = 32
    micro_batch: int = 2
    lr: float = 3e-3
    seed: int = 0
    progress: bool = True  # rank 0's tqdm bar


@dataclass
class RankReport:
    """What one rank saw; printed as one JSON line (``event: "selftest"``)."""

    rank: int
    world_size: int
    local_rank: int
    hostname: str
    backend: str
    master_addr: str
    zero_stage: int
    dtype: str
    losses: list[float]
    params_local: int  # parameter elements this rank holds (its ZeRO-3 partitions)
    params_total: int  # elements of the full model
    params_share: int  # what a rank should hold under ZeRO-3: sum of ceil(numel / world_size)
    seconds: float  # from the start of the command to the report, process-group init included
    event: str = field(default="selftest")

    @property
    def loss_fell(self) -> bool:
        return len(self.losses) >= 2 and self.losses[-1] < self.losses[0]

    @property
    def holds_share(self) -> bool:
        return self.params_local == self.params_share

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def load_model_config(path: str | None) -> Any:
    """The built-in tiny Llama config, or the one at ``path`` (a directory or a JSON file).

    Raises ValueError naming the file and what is wrong.
    """
    from transformers import AutoConfig

    from natscale.model.hf_config import CONFIG_ERRORS, config_problem

    if path is None:
        data = dict(TINY_LLAMA)
        return AutoConfig.for_model(data.pop("model_type"), **data)
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    if not file.is_file():
        raise ValueError(
            f"--model-config {path}: {file} does not exist; give a config.json file or a directory holding one"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not a UTF-8 text file ({exc}); give a config.json") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{file}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
        ) from exc
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(
            f'{file}: no \'model_type\' key; this must be a Hugging Face config.json (e.g. "model_type": "llama")'
        )
    try:
        config = AutoConfig.from_pretrained(str(file))
    except CONFIG_ERRORS as exc:
        raise ValueError(f"{file}: transformers cannot read it: {config_problem(exc)}") from exc
    config.use_cache = False  # no KV cache in training (it also breaks packed attention)
    return config


def deepspeed_config(opts: SelftestOptions) -> dict[str, Any]:
    """The DeepSpeed config of the selftest: ZeRO ``opts.zero_stage``, torch AdamW, optional bf16."""
    zero: dict[str, Any] = {"stage": opts.zero_stage}
    if opts.zero_stage == 3:
        # partition every parameter, even the small norm weights, so the count is exact
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": opts.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "steps_per_print": 1_000_000,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": opts.lr, "torch_adam": True}},
        "bf16": {"enabled": opts.bf16},
    }


def build_model(model_config: Any, ds_config: dict[str, Any]) -> Any:
    """Random-init causal LM; under ZeRO-3 built inside zero.Init (never whole on any rank)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    # HfDeepSpeedConfig is looked up through a weak reference: keep it alive while building.
    from natscale.model.load import sdpa_or_eager

    hf_ds = HfDeepSpeedConfig(ds_config)
    try:
        attn = sdpa_or_eager(model_config)
        model = AutoModelForCausalLM.from_config(model_config, attn_implementation=attn)
    except ValueError as exc:
        raise ValueError(
            f"model config {model_config.model_type!r}: not a causal LM ({exc})"
        ) from exc
    finally:
        del hf_ds
        unset_hf_deepspeed_config()
    return model


def count_params(model: Any, world_size: int) -> tuple[int, int, int]:
    """(elements held by this rank, elements of the full model, ZeRO-3 share per rank)."""
    local = total = share = 0
    for p in model.parameters():
        numel = int(getattr(p, "ds_numel", p.numel()))
        ds_tensor = getattr(p, "ds_tensor", None)
        local += int(ds_tensor.numel()) if ds_tensor is not None else p.numel()
        total += numel
        share += math.ceil(numel / world_size)
    return local, total, share


def run_selftest(opts: SelftestOptions, info: DistInfo, *, started: float) -> RankReport:
    """Train the tiny model for ``opts.steps`` steps on this rank; collective over all ranks.

    ``started`` is the ``time.perf_counter()`` at the start of the command.
    """
    import deepspeed
    import torch
    from tqdm import tqdm

    from natscale.model.load import text_config

    # DeepSpeed calls torch's deprecated all_gather_into_tensor / reduce_scatter_tensor every step.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    if opts.steps < 2:
        raise ValueError(f"--steps {opts.steps}: need at least 2 steps to see the loss fall")
    model_config = load_model_config(opts.model_config)
    ds_config = deepspeed_config(opts)
    torch.manual_seed(opts.seed)  # the same initial weights on every rank and every run
    model = build_model(model_config, ds_config)
    engine, *_ = deepspeed.initialize(
        model=model, config=ds_config, model_parameters=model.parameters()
    )
    params_local, params_total, params_share = count_params(engine.module, info.world_size)

    # int64 [micro_batch, seq_len]; different tokens per rank, the same batch every step
    gen = torch.Generator().manual_seed(opts.seed + info.rank)
    input_ids = torch.randint(
        0, text_config(model_config).vocab_size, (opts.micro_batch, opts.seq_len), generator=gen
    )
    losses = []
    for _ in tqdm(
        range(opts.steps), desc="selftest", disable=info.rank != 0 or not opts.progress, leave=False
    ):
        loss = engine(input_ids=input_ids, labels=input_ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(round(float(loss.item()), 4))
    return RankReport(
        rank=info.rank,
        world_size=info.world_size,
        local_rank=info.local_rank,
        hostname=socket.gethostname(),
        backend=info.backend,
        master_addr=os.environ.get("MASTER_ADDR", ""),
        zero_stage=opts.zero_stage,
        dtype="bf16" if opts.bf16 else "fp32",
        losses=losses,
        params_local=params_local,
        params_total=params_total,
        params_share=params_share,
        seconds=round(time.perf_counter() - started, 2),
    )


def verdict(reports: list[RankReport]) -> tuple[bool, str]:
    """(passed, one-line summary) over every rank's report."""
    first = sum(r.losses[0] for r in reports) / len(reports)
    last = sum(r.losses[-1] for r in reports) / len(reports)
    r0 = reports[0]
    loss_ok = all(r.loss_fell for r in reports)
    partitioned = all(r.holds_share for r in reports) and all(
        r.params_local < r.params_total for r in reports if r.world_size > 1
    )
    ok = loss_ok and (partitioned or r0.zero_stage != 3)
    problems = []
    if not loss_ok:
        problems.append(
            f"loss did not fall on rank(s) {[r.rank for r in reports if not r.loss_fell]}"
        )
    if r0.zero_stage == 3 and not partitioned:
        problems.append(
            f"parameters not partitioned: {[r.params_local for r in reports]} held of {r0.params_total}"
        )
    line = (
        f"selftest: loss {first:.3f} -> {last:.3f} over {len(r0.losses)} steps, "
        f"world size {r0.world_size} ({r0.backend}), ZeRO-{r0.zero_stage} {r0.dtype}, "
        f"parameters partitioned: {'yes' if partitioned else 'no'} "
        f"({r0.params_local:,} of {r0.params_total:,} on rank 0), "
        f"{max(r.seconds for r in reports):.1f} s: "
        + ("OK" if ok else "FAILED, " + "; ".join(problems))
    )
    return ok, line
