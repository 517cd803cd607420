"""Count the ZeRO-3 all-gathers of the lm_head weight in one forward + backward of NatCausalLM.

    python tests/model/zero3_head_probe.py [fused|logits] [--skip-backward-gather]

A tiny Llama (untied head) under ``deepspeed.zero.Init`` and a ZeRO-3 engine in one rank, no
parameter persistence (every weight partitioned). DeepSpeed's parameter coordinator is wrapped
(the real one runs) to note, per ``fetch_sub_module`` call, the module and pass, and whether the
head weight went from NOT_AVAILABLE to AVAILABLE (a gather). Prints one JSON line:
{"forward": n, "backward": n, "loss_finite": bool, "head_grad_norm": float}.
``--skip-backward-gather`` is the experiment of dropping the backward gather (the op's backward
never reads the weight): a forward hook after DeepSpeed's undoes the loss head's pre-backward
reference counts, so DeepSpeed's pre-backward fetch of it does not run.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main(loss: str, skip_backward_gather: bool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    from deepspeed.runtime.zero import partitioned_param_coordinator as ppc
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from transformers import LlamaConfig, LlamaForCausalLM

    from natscale.model.nat_lm import NatCausalLM

    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        lm = LlamaForCausalLM(config)
    model = NatCausalLM(lm, loss=loss)
    model.register_zero3_head()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    head = lm.get_output_embeddings().weight
    if skip_backward_gather:

        def undo_pre_backward(module, inputs, output):
            module.applied_pre_backward_ref_cnt = 0  # one count per output tensor

        model.nat_loss.register_forward_hook(undo_pre_backward)
    counts = {"forward": 0, "backward": 0}
    real_fetch = ppc.PartitionedParameterCoordinator.fetch_sub_module

    def counting_fetch(self, module, forward):
        before = head.ds_status
        real_fetch(self, module, forward)
        if before == ZeroParamStatus.NOT_AVAILABLE and head.ds_status != before:
            counts["forward" if forward else "backward"] += 1

    ppc.PartitionedParameterCoordinator.fetch_sub_module = counting_fetch
    T = 64
    ids = torch.randint(0, 512, (1, T))
    pos = torch.arange(T)[None]
    targets = torch.randint(0, 512, (T,))
    targets[:10] = -100
    cu = torch.tensor([0, T], dtype=torch.int32)
    loss_sum, *_ = engine(ids, pos, targets, torch.ones(T), cu, int((targets != -100).sum()))
    try:
        engine.backward(loss_sum)
    except RuntimeError as exc:
        print(json.dumps({**counts, "backward_error": str(exc).splitlines()[0][:300]}))
        raise SystemExit(1) from exc
    grad = deepspeed.utils.safe_get_full_grad(head)
    print(json.dumps({**counts, "loss_finite": bool(torch.isfinite(loss_sum)),
                      "head_grad_norm": float(grad.norm()) if grad is not None else None}))  # fmt: skip
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0] if args else "fused", "--skip-backward-gather" in sys.argv)
    from natscale.train.dist import exit_process

    exit_process(0)  # no interpreter finalization after gloo (see exit_process)
