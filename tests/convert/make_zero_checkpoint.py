"""Train a random-init Llama for a step or two under DeepSpeed ZeRO and save a checkpoint.

One rank of a job: run it under ``torchrun --nproc_per_node N`` (or alone, a world of one).
The conversion tests and the conversion benchmark use it to make real DeepSpeed checkpoints.

Writes into OUT: ``checkpoints/<tag>/`` (DeepSpeed's files, ``checkpoints/latest``),
``hf_config/config.json`` (the model config, as the trainer's run directory does) and, on rank 0,
``reference.safetensors``: the full parameters after the last step as gathered from the live
engine (fp32 master weights are not reachable that way, so this holds the training dtype).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model-config", type=Path, help="HF config.json; default: a tiny Llama")
    p.add_argument("--size", default="tiny", choices=["tiny", "1b", "500m"])
    p.add_argument("--tie", action="store_true", help="tie input and output embeddings")
    p.add_argument("--stage", type=int, default=3, choices=[2, 3])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--tag", default="global_step{step}")
    p.add_argument("--sub-group-size", type=int, default=100_000_000)
    return p.parse_args()


SIZES = {
    # hidden, layers, intermediate, heads, vocab
    "tiny": (64, 2, 128, 4, 512),
    "500m": (1536, 14, 4096, 12, 32000),
    "1b": (2048, 16, 5632, 16, 32000),
}


def _config(args: argparse.Namespace):
    from transformers import AutoConfig, LlamaConfig

    if args.model_config is not None:
        cfg = AutoConfig.from_pretrained(args.model_config.parent)
    else:
        hidden, layers, inter, heads, vocab = SIZES[args.size]
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=256,
            tie_word_embeddings=args.tie,
        )
    cfg.use_cache = False
    return cfg


def _ds_config(args: argparse.Namespace, world_size: int) -> dict:
    zero: dict = {"stage": args.stage}
    if args.stage == 3:
        # persistence 0: every parameter is partitioned, even the tiny norms
        zero.update(stage3_param_persistence_threshold=0, sub_group_size=args.sub_group_size)
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "bf16": {"enabled": args.dtype == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def main() -> None:
    args = _parse()
    from natscale.train.dist import init_distributed

    info = init_distributed(timeout_s=600)
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    torch.manual_seed(1234)
    cfg = _config(args)
    ds_config = _ds_config(args, info.world_size)
    keep_alive = HfDeepSpeedConfig(ds_config) if args.stage == 3 else None  # zero.Init for stage 3
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    engine, *_ = deepspeed.initialize(
        model=model, config=ds_config, model_parameters=model.parameters()
    )
    gen = torch.Generator().manual_seed(100 + info.rank)
    for _ in range(args.steps):
        ids = torch.randint(0, cfg.vocab_size, (1, args.seq_len), generator=gen)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    out: Path = args.out
    tag = args.tag.format(step=engine.global_steps)
    engine.save_checkpoint(str(out / "checkpoints"), tag=tag)
    _save_reference(engine, out, rank=info.rank, stage=args.stage)
    if info.rank == 0:
        cfg.save_pretrained(out / "hf_config")
        print(json.dumps({"tag": tag, "world": info.world_size, "loss": loss.item()}), flush=True)
    del keep_alive
    torch.distributed.barrier()


def _save_reference(engine, out: Path, *, rank: int, stage: int) -> None:
    """Gather the live parameters (training dtype) and save them on rank 0."""
    import deepspeed
    from safetensors.torch import save_file

    if os.environ.get("NATSCALE_SKIP_REFERENCE") == "1":
        return
    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=stage == 3):
        if rank == 0:
            tensors = {name: p.detach().clone().contiguous() for name, p in params.items()}
            save_file(tensors, str(out / "reference.safetensors"))


if __name__ == "__main__":
    main()
