"""Train random-init Llamas for a step or two under DeepSpeed ZeRO and save their checkpoints.

One rank of a job: run it under ``torchrun --nproc_per_node N`` (or alone, a world of one). The
conversion tests and the conversion benchmark use it to make real DeepSpeed checkpoints. Several
variants share one process group (python and DeepSpeed start once), one engine after the other.

A variant is ``z{stage}-{fp32|bf16}[-tied][-gemma2]``; the tiny models are the shipped example
configs (``examples/models/tiny-llama[-tied]``; ``-gemma2``: a Gemma 2 of the same sizes). For
each it writes ``OUT/<variant>/``: ``checkpoints/<tag>/`` (DeepSpeed's files,
``checkpoints/latest``), ``hf_config/config.json`` (as the trainer's run directory holds it) and,
on rank 0, ``reference.safetensors``: the model's parameters after the last step gathered from the
live engine, in the training dtype.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIZES = {
    # hidden, layers, intermediate, heads, vocab; "tiny" is examples/models/tiny-llama[-tied]
    "tiny": None,
    "500m": (1536, 14, 4096, 12, 32000),
    "1b": (2048, 16, 5632, 16, 32000),
}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--variants", default="z3-fp32", help="comma-separated, e.g. z3-bf16-tied,z2-fp32"
    )
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--tag", default="global_step{step}")
    p.add_argument("--no-reference", action="store_true", help="skip reference.safetensors")
    return p.parse_args()


def _config(size: str, tie: bool):
    from transformers import AutoConfig, LlamaConfig

    if SIZES[size] is None:
        name = "tiny-llama-tied" if tie else "tiny-llama"
        cfg = AutoConfig.from_pretrained(REPO / "examples" / "models" / name)
        cfg.use_cache = False
        return cfg
    hidden, layers, inter, heads, vocab = SIZES[size]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        use_cache=False,
    )


def _ds_config(stage: int, bf16: bool, world_size: int) -> dict:
    zero: dict = {"stage": stage}
    if stage == 3:
        # persistence 0: every parameter is partitioned, even the tiny norms;
        # small sub-groups keep the optimizer step's temporaries small for the 1B benchmark model
        zero.update(stage3_param_persistence_threshold=0, sub_group_size=100_000_000)
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
    }


def train_and_save(variant: str, args: argparse.Namespace, rank: int, world_size: int) -> dict:
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    parts = variant.split("-")
    stage, bf16, tie = int(parts[0][1:]), parts[1] == "bf16", "tied" in parts
    torch.manual_seed(1234)
    cfg = _config(args.size, tie)
    if "gemma2" in parts:  # a family without sdpa, with a logit cap: verify must still run
        from transformers import Gemma2Config

        keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        cfg = Gemma2Config(
            **{k: getattr(cfg, k) for k in keep}, head_dim=8, num_attention_heads=2,
            num_key_value_heads=1, use_cache=False,
        )  # fmt: skip
    ds_config = _ds_config(stage, bf16, world_size)
    # the object must stay alive while the model is built: then it is built under zero.Init
    hf_ds = HfDeepSpeedConfig(ds_config) if stage == 3 else None
    attn = "eager" if "gemma2" in parts else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    engine, *_ = deepspeed.initialize(
        model=model, config=ds_config, model_parameters=model.parameters()
    )
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(args.steps):
        ids = torch.randint(0, cfg.vocab_size, (1, args.seq_len), generator=gen)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    out: Path = args.out / variant
    tag = args.tag.format(step=engine.global_steps)
    engine.save_checkpoint(str(out / "checkpoints"), tag=tag)
    if not args.no_reference:
        _save_reference(engine, out, rank=rank, stage=stage)
    if rank == 0:
        cfg.save_pretrained(out / "hf_config")
    del hf_ds
    torch.distributed.barrier()
    return {"variant": variant, "tag": tag, "loss": round(loss.item(), 4)}


def _save_reference(engine, out: Path, *, rank: int, stage: int) -> None:
    """Gather the live parameters (training dtype) and save them on rank 0."""
    import deepspeed
    from safetensors.torch import save_file

    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=stage == 3):
        if rank == 0:
            tensors = {name: p.detach().clone().contiguous() for name, p in params.items()}
            save_file(tensors, str(out / "reference.safetensors"))


def main() -> None:
    args = _parse()
    from natscale.train.dist import init_distributed

    info = init_distributed(timeout_s=600)
    for variant in args.variants.split(","):
        result = train_and_save(variant, args, info.rank, info.world_size)
        if info.rank == 0:
            print(json.dumps({**result, "world": info.world_size}), flush=True)


if __name__ == "__main__":
    main()
    from natscale.train.dist import exit_process

    exit_process(0)  # no interpreter finalization after gloo (see exit_process)
