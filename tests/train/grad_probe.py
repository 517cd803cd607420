"""Run ONE optimizer step of `natscale train` and save the full gradients it applied.

Usage (one process per rank, under any launcher): python grad_probe.py CONFIG OUT.pt [CONFIG OUT.pt]..
Several pairs run one after the other in the same process group (saves a launch). The trainer is
the real one; only ``engine.step`` is wrapped so that the accumulated, reduced
gradients can be gathered (``deepspeed.utils.safe_get_full_grad``) just before the optimizer uses
them. Rank 0 writes {"grads": {name: fp32 tensor}, "loss": float, "tokens": {...}}.
"""

from __future__ import annotations

import gc
import sys

import torch
import torch.distributed as dist

from natscale.train.dist import init_distributed


def main(pairs: list[str]) -> None:
    init_distributed()
    for config, out in zip(pairs[::2], pairs[1::2], strict=True):
        probe(config, out)
        gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def probe(config: str, out: str) -> None:
    from deepspeed.utils import safe_get_full_grad

    from natscale.config.loader import load_config
    from natscale.config.run import RunConfig
    from natscale.train.preflight import check_run
    from natscale.train.trainer import StopSignal, Trainer

    run = load_config(config, RunConfig)
    checks = check_run(run, resume=False)
    info = init_distributed()  # already initialised: returns this rank's info
    trainer = Trainer(run, info, checks, resume=False)
    engine = trainer.engine
    real_step = engine.step
    grads: dict[str, torch.Tensor] = {}

    def step_and_capture(*args, **kwargs):
        if engine.is_gradient_accumulation_boundary() and not grads:
            for name, param in trainer.bundle.model.named_parameters():
                grads[name] = safe_get_full_grad(param).detach().float().cpu().clone()
        return real_step(*args, **kwargs)

    engine.step = step_and_capture
    result = trainer.train_step(StopSignal())
    if info.rank == 0:
        keys = ("loss", "tokens", "router_aux_loss")
        torch.save({"grads": grads, **{k: result[k] for k in keys}}, out)
    if trainer.writer is not None:
        trainer.writer.close()
    engine.destroy()


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--local_rank")])  # deepspeed adds it
    from natscale.train.dist import exit_process

    exit_process(0)  # no interpreter finalization after gloo (see exit_process)
