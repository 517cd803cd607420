"""The run every rank will start, validated on the launching node before any node starts.

For ``train``: the run config (with its ``--set`` overrides) and everything ``natscale train``'s
own preflight checks (model, prepared data, tokenizer, ds_config, output directory). Data is
prepared once, beforehand: a ``data.path`` that does not exist is refused with a pointer to
``natscale prepare``, never tokenised on the nodes. ``natscale launch`` parses the arguments
after ``--`` with ``natscale train``'s own parser and passes them here as ``TrainArgs``.
"""

from __future__ import annotations

from pathlib import Path

from natscale.launch.findings import Finding
from natscale.train.args import TrainArgs


def check_train(args: TrainArgs, *, world_size: int) -> tuple[list[str], list[Finding]]:
    """(lines describing the run, findings) for ``natscale train`` on ``world_size`` ranks."""
    from natscale.config.ds_config import resolve_ds_config
    from natscale.config.loader import ConfigError, load_config
    from natscale.config.run import RunConfig
    from natscale.train.preflight import PreflightError, check_config_location, check_run

    path = args.config
    if not path:
        return [], [
            Finding(
                "error",
                "no run config: natscale launch [options] -- CONFIG [--set KEY=VALUE ...]",
                "after --",
            )
        ]
    try:
        run = load_config(path, RunConfig, args.overrides)
    except ConfigError as exc:
        return [], [Finding("error", str(exc))]
    try:
        check_config_location(path, run)  # as natscale train's _load_run, before its check_run
    except PreflightError as exc:
        return [], [Finding("error", str(exc), path)]
    data = Path(run.data.path)
    if not data.exists():
        return [], [
            Finding(
                "error",
                f"data.path {data} does not exist. natscale launch never tokenises on the nodes: "
                f"prepare the data once, beforehand (`natscale prepare PREPARE_CONFIG --out {data}`), "
                "on storage every node reads at this path, then launch",
                path,
            )
        ]
    try:
        checks = check_run(run, resume=args.resume, fresh=args.fresh, resume_from=args.resume_from)
        ds = resolve_ds_config(run, world_size=world_size, hidden_size=checks.hidden_size)
    except (ConfigError, PreflightError) as exc:
        return [], [Finding("error", str(exc), path)]
    micro, accum = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    lines = [
        f"run config: {path}{' (resume)' if args.resume else ''} -> {run.output_dir}",
        f"data: {data} ({checks.num_rows:,} packed rows, prepared beforehand)",
        f"deepspeed: {run.deepspeed.config}, ZeRO stage {ds.get('zero_optimization', {}).get('stage', 0)}, "
        f"{run.train.precision}; {micro} row(s) x {accum} accumulation x {world_size} ranks = "
        f"{ds['train_batch_size']} rows per step",
    ]
    return lines, [Finding("note", n, path) for n in checks.notes]
