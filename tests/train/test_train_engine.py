"""Engine setup pieces that need no process group: LR schedule, optimizer groups, LOCAL_SIZE."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from natscale.config.run import TrainSection
from natscale.train.engine import export_local_size, lr_multiplier, param_groups


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule(schedule: str):
    train = TrainSection(lr_schedule=schedule, warmup_steps=4, min_lr_ratio=0.1)
    mult = [lr_multiplier(s, train=train, total_steps=24) for s in range(24)]
    assert mult[:4] == [0.25, 0.5, 0.75, 1.0]
    if schedule == "constant":
        assert set(mult[4:]) == {1.0}
    else:
        assert mult[4] == 1.0 and all(a >= b for a, b in itertools.pairwise(mult[4:]))
        assert math.isclose(lr_multiplier(24, train=train, total_steps=24), 0.1)
    if schedule == "cosine":
        assert math.isclose(mult[14], 0.1 + 0.9 * 0.5)  # half way through the decay


def test_norms_and_biases_are_not_decayed():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(4, 4)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "1"),
        ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "2"),
        ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, "8"),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS_PER_NODE": "2(x4)"}, None),
        ({"LOCAL_SIZE": "3", "LOCAL_WORLD_SIZE": "2"}, "3"),
    ],
)
def test_local_size_like_the_deepspeed_launcher(env: dict, expected: str | None):
    export_local_size(env)
    assert env.get("LOCAL_SIZE") == expected


def test_resumed_optimizer_settings_follow_the_run_config():
    """Bug 7: LambdaLR's base_lrs and the groups' betas/eps/decay come back from a checkpoint;
    the run config's values replace them, and the current LR follows the schedule."""
    import torch

    from natscale.config.run import TrainSection
    from natscale.train.engine import apply_optimizer_settings

    def make(lr: float, wd: float):
        params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
        groups = [
            {"params": params[:1], "weight_decay": wd},
            {"params": params[1:], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)

    saved = make(3e-3, 0.1)
    saved.optimizer.step()
    saved.step()
    sched = make(3e-3, 0.1)
    sched.load_state_dict(saved.state_dict())
    train = TrainSection(lr=3e-3, weight_decay=0.1, adam_betas=(0.9, 0.95))
    assert apply_optimizer_settings(sched, train) == []  # same config: nothing changes
    train = TrainSection(lr=1e-4, weight_decay=0.0, adam_betas=(0.9, 0.99))
    notes = apply_optimizer_settings(sched, train)
    assert notes == [
        "train.lr 0.003 -> 0.0001",
        "train.adam_betas[1] 0.95 -> 0.99",
        "train.weight_decay 0.1 -> 0",
    ]
    groups = sched.optimizer.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(5e-5)] * 2
    assert sched.get_last_lr() == [pytest.approx(5e-5)] * 2
    assert groups[0]["betas"] == (0.9, 0.99) and groups[0]["weight_decay"] == 0.0
