"""Engine setup: filled DeepSpeed config, the model under zero.Init, optimizer groups, LR schedule."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from natscale.config.ds_config import deep_merge, resolve_ds_config, zero_stage
from natscale.config.run import RunConfig, TrainSection
from natscale.model.load import (
    build_causal_lm,
    choose_attn_implementation,
    load_hf_config,
    model_class,
    text_config,
)
from natscale.model.nat_lm import NatCausalLM


@dataclass
class EngineBundle:
    engine: Any  # deepspeed.DeepSpeedEngine
    model: NatCausalLM
    hf_config: Any
    ds_config: dict[str, Any]
    attn_implementation: str
    hf_ds_config: Any  # kept alive: transformers reads ZeRO-3 state from it (saving, init)


# launcher variables that give the number of ranks on this node
_LOCAL_SIZE_SOURCES = (
    "LOCAL_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "PMI_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
    "SLURM_NTASKS_PER_NODE",
)


def export_local_size(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Set LOCAL_SIZE (ranks on this node) as the deepspeed launcher does, when another launcher ran us.

    Without it DeepSpeed's CPU accelerator answers ``device_count()`` by running ``numactl
    --hardware`` in a subprocess, and ZeRO-3 asks once per gradient bucket: ~20 forks a micro-batch.
    """
    if "LOCAL_SIZE" in environ:
        return
    for name in _LOCAL_SIZE_SOURCES:
        if environ.get(name, "").isdigit():
            environ["LOCAL_SIZE"] = environ[name]
            return
    launched = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "MV2_COMM_WORLD_RANK")
    if not any(name in environ for name in launched) or environ.get("WORLD_SIZE") == "1":
        environ["LOCAL_SIZE"] = "1"  # a job of one


def lr_multiplier(step: int, *, train: TrainSection, total_steps: int) -> float:
    """LR factor for optimizer step ``step`` (0-based): linear warmup, then the chosen decay."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - train.warmup_steps) / max(1, total_steps - train.warmup_steps))
    low = train.min_lr_ratio
    if train.lr_schedule == "cosine":
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return low + (1.0 - low) * (1.0 - progress)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: 1-D parameters (biases, norm weights) are never decayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        shape = getattr(param, "ds_shape", param.shape)  # under zero.Init the local shape is (0,)
        (decay if len(shape) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_engine(
    run: RunConfig, *, world_size: int, total_steps: int, load_universal: bool = False
) -> EngineBundle:
    """Everything DeepSpeed needs, then ``deepspeed.initialize``. Call after init_distributed.

    load_universal: the checkpoint to resume is a universal one (natscale.checkpoint.universal).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from transformers.integrations import HfDeepSpeedConfig

    hf_config = load_hf_config(run.model)
    hidden_size = text_config(hf_config).hidden_size
    ds = resolve_ds_config(run, world_size=world_size, hidden_size=hidden_size)
    if load_universal:
        ds = deep_merge(ds, {"checkpoint": {"load_universal": True}})
    zero3 = zero_stage(ds) == 3
    hf_ds_config = HfDeepSpeedConfig(ds) if zero3 else None  # makes from_pretrained use zero.Init
    device_type = get_accelerator().device_name()
    attn = choose_attn_implementation(
        run.model.attn_implementation, device_type, model_cls=model_class(hf_config)
    )
    lm = build_causal_lm(
        run.model, precision=run.train.precision, attn_implementation=attn, seed=run.train.seed
    )
    model = NatCausalLM(
        lm,
        flatten_rows=attn.startswith("flash"),
        loss=run.model.loss,
        router_aux_loss_coef=run.model.router_aux_loss_coef,
    )
    if zero3:
        model.register_zero3_head()
    schedule = functools.partial(lr_multiplier, train=run.train, total_steps=total_steps)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, run.train.weight_decay),
        config=ds,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return EngineBundle(engine, model, hf_config, ds, attn, hf_ds_config)


def apply_optimizer_settings(scheduler: Any, train: TrainSection) -> list[str]:
    """After a checkpoint is loaded: the run config's ``lr``, ``adam_betas``, ``adam_eps`` and
    ``weight_decay`` replace the ones the checkpoint restored (LambdaLR's ``base_lrs``, the
    optimizer's param groups), and the current LR follows the schedule from them. Returns a note
    per value that changed (empty when the run config repeats the checkpoint's).

    ``scheduler`` is the engine's LambdaLR; its optimizer's groups are the ones DeepSpeed steps
    (ZeRO's ``param_groups`` are the wrapped optimizer's). Group 0 is the decayed one
    (:func:`param_groups`); the others are never decayed.
    """
    groups = scheduler.optimizer.param_groups
    notes = []

    def changed(name: str, before: Any, after: Any) -> bool:
        if before is None or math.isclose(float(before), float(after), rel_tol=1e-9):
            return False
        notes.append(f"{name} {before:g} -> {after:g}")
        return True

    if changed("train.lr", scheduler.base_lrs[0], train.lr) or any(
        b != train.lr for b in scheduler.base_lrs
    ):
        scheduler.base_lrs = [train.lr] * len(groups)
    beta1, beta2 = train.adam_betas
    for i, group in enumerate(groups):
        group["initial_lr"] = train.lr
        if "betas" in group:
            old1, old2 = group["betas"]
            if i == 0:
                changed("train.adam_betas[0]", old1, beta1)
                changed("train.adam_betas[1]", old2, beta2)
            group["betas"] = (beta1, beta2)
        if "eps" in group:
            if i == 0:
                changed("train.adam_eps", group["eps"], train.adam_eps)
            group["eps"] = train.adam_eps
        if i == 0 and "weight_decay" in group:
            changed("train.weight_decay", group["weight_decay"], train.weight_decay)
            group["weight_decay"] = train.weight_decay
    step = scheduler.last_epoch
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in groups]
    return notes
