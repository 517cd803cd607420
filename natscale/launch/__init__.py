"""Multi-node launching over DeepSpeed's launcher (``natscale launch``).

- ``hostfile``: DeepSpeed/MPI hostfiles with line numbers in every error.
- ``resources``: --include/--exclude/--nodes/--gpus-per-node checked, then resolved by DeepSpeed.
- ``envfile``: the variables every node needs and the ``.deepspeed_env`` file carrying them.
- ``plan``: the ``deepspeed`` command this node runs and what runs on every node (dry run).
- ``preflight``: checks before anything starts, each with a message that says what to do.
- ``runcheck``: the run config and its prepared data, validated on the launching node.
- ``execute``: run the launcher, forward signals, report.
- ``entry``: the CLI as a script, for DeepSpeed's slurm runner (it has no ``--module``).

User-facing scripts (SLURM batch file, mpirun wrapper, per-node no-ssh script, hostfile example)
live in ``launcher/`` at the repository root; ``docs/launch.md`` explains them.
"""
