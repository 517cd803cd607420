"""The run config of ``natscale train``: one YAML file per run, validated here.

Sections: ``model``, ``data``, ``train``, ``deepspeed``, ``checkpoint``, ``logging`` and the run
directory ``output_dir``. Every section forbids unknown keys, so a misspelt key is an error that
names it. Relative paths are taken from the current directory (``deepspeed.config:
ds_configs/NAME.json`` else names a config shipped in ``natscale/ds_configs/``). The resolved
config is saved as ``RUN_DIR/config.yaml``; ``docs/training.md`` documents every key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from natscale.config.paths import PathText


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    """Which causal LM to train. Exactly one of ``path`` and ``config``."""

    path: str | None = None
    """Local Hugging Face model directory (config.json + weights): fine-tune these weights."""
    config: str | None = None
    """A config.json (or a directory holding one): random init, for tests and benchmarks."""
    tokenizer: str | None = None
    """Tokenizer directory; default: DATA/tokenizer, else the model directory. None found: none exported."""
    attn_implementation: Literal["auto", "flash_attention_2", "flex_attention", "sdpa", "eager"] = (
        "auto"
    )
    """auto: flash_attention_2 on CUDA with flash-attn, else flex_attention on CUDA, else sdpa."""
    activation_checkpointing: bool = True
    loss: Literal["fused", "logits"] = "fused"
    """fused: natscale.ops.segment_cross_entropy (lm_head + loss, no [T, V] logits in HF code).
    logits: the HF lm_head materialises fp32 [T, V] logits, then F.cross_entropy (the usual HF
    ``labels`` path; a baseline for benchmarks). Both return the same sums and normalisation."""
    router_aux_loss_coef: float | None = Field(None, ge=0)
    """Weight of a mixture-of-experts model's router load-balancing loss (natscale.model.router).
    Default: what the HF model does, its config's ``router_aux_loss_coef`` when its
    ``output_router_logits`` is true, else none. 0: none. A model whose HF class computes no
    such loss is refused when this is positive."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if (self.path is None) == (self.config is None):
            raise ValueError(
                "set exactly one of model.path (a local HF model directory to fine-tune) and "
                "model.config (a config.json for random init)"
            )
        return self


class DataSection(_Section):
    path: str
    """The output directory of ``natscale prepare`` (datasets.save_to_disk + stats.json)."""
    shuffle: bool = True
    """Seeded shuffle of the rows, a new permutation every epoch (seed: train.seed)."""
    micro_batch_rows: int = Field(1, ge=1)
    """Packed rows per micro-batch on each rank (DeepSpeed's train_micro_batch_size_per_gpu)."""


_Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # torch's Adam refuses any other, on every rank


class TrainSection(_Section):
    seed: int = Field(0, ge=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    steps: int | None = Field(None, ge=1)
    """Optimizer steps; default: enough for ``epochs`` passes over the rows."""
    epochs: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each rank."""
    loss_norm: Literal["token", "sequence"] = "token"
    """token: weighted NLL sum / trained tokens of the whole step (all micro-batches, all ranks).
    sequence: every segment's weighted mean NLL, summed, / segments with a trained token."""
    lr: float = Field(1e-5, gt=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate of the cosine/linear decay, as a fraction of ``lr``."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled (AdamW) decay of matrices; biases and norm weights are never decayed."""
    adam_betas: tuple[_Beta, _Beta] = (0.9, 0.95)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0: off)."""
    max_nonfinite_steps: int = Field(10, ge=0)
    """Steps skipped for a non-finite loss/gradient before the run aborts."""
    stop_after_steps: int | None = Field(None, ge=1)
    """Save and exit after this many steps without changing the schedule (time-sliced jobs)."""


class DeepSpeedSection(_Section):
    config: str = "ds_configs/zero3_bf16.json"
    """A ds_configs JSON; its "auto" values are filled from this run config."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Merged into the JSON before filling, e.g. {zero_optimization: {offload_param: {...}}}."""


class CheckpointSection(_Section):
    every_steps: int = Field(0, ge=0)
    """Save a checkpoint every N optimizer steps (0: only at the end and on SIGTERM)."""
    keep_last: int = Field(2, ge=1)
    at_end: bool = True
    """Save a checkpoint when the run ends (false: throwaway runs such as benchmarks; a SIGTERM
    still saves)."""
    export_hf: bool = True
    """Write RUN_DIR/hf (16-bit weights, config, tokenizer) at the end of the run."""


class LoggingSection(_Section):
    tensorboard: bool = True
    progress_bar: bool = True
    peak_tflops: float | None = Field(None, gt=0)
    """Peak FLOP/s (in TFLOP/s) per device for MFU; default: a table of known GPUs, none on CPU."""


class RunConfig(_Section):
    output_dir: PathText
    """The run directory (never empty: "" would mean the current directory)."""
    model: ModelSection
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
