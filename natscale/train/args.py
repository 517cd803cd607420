"""What a ``natscale train`` run is asked to do besides its config: overrides and resume flags.

``natscale train`` builds it from its command line; ``natscale launch`` from the arguments after
``--``, to check the run every rank will start before any node starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainArgs:
    config: str | None  # the run config YAML (None: not given)
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, in order
    resume: bool = False  # continue from output_dir/checkpoints/latest
    resume_from: str | None = None  # continue from this checkpoint tag (implies resume)
    fresh: bool = False  # start at step 1; a previous run's files are moved aside

    @property
    def resuming(self) -> bool:
        return self.resume or self.resume_from is not None
