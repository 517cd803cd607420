"""Per-step metrics: token rates counted three ways, MFU, memory; JSONL and TensorBoard writers.

Token counts of a step (summed over all micro-batches and ranks):
    slot     B * L of every micro-batch: the tokens the model processes, padding included
    nonpad   tokens of real segments (cu_seqlens[-1] per row)
    trained  tokens whose loss is trained (targets != -100)
Rates are per device: count / step wall time / world size.

MFU (model FLOPs utilisation; docs/training.md gives the derivation):
    flops_step = 6 * N_body * nonpad                    dense layers, forward + backward
               + 6 * H * V * trained                    lm_head: only trained tokens reach it
               + 6 * n_layers * d_attn * sum_seg(L_seg^2)   attention, per packed segment, causal-halved
    MFU = flops_step / step_time / world_size / peak_flops_per_device
N_body counts every parameter except the input embedding and the lm_head; d_attn = heads * head_dim.
Activation-checkpointing recompute is not counted (that would be HFU).
"""

from __future__ import annotations

import json
import math
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# dense bf16 tensor-core peak, FLOP/s per device (datasheets); first match on the device name wins
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
]


def peak_flops(override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s per device or None, a label naming the device and where the peak came from)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if override_tflops is not None:
        return override_tflops * 1e12, f"{name} (peak {override_tflops:g} TFLOP/s from config)"
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak, f"{name} (peak {peak / 1e12:g} TFLOP/s bf16 dense)"
    return None, f"{name} (peak unknown: set logging.peak_tflops for MFU)"


@dataclass(frozen=True)
class FlopsModel:
    body_params: int
    hidden_size: int
    vocab_size: int
    num_layers: int
    attn_dim: int

    @classmethod
    def from_model(cls, lm: torch.nn.Module, config: Any) -> FlopsModel:
        skip = {id(lm.get_input_embeddings().weight), id(lm.get_output_embeddings().weight)}
        body = sum(getattr(p, "ds_numel", p.numel()) for p in lm.parameters() if id(p) not in skip)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            body, config.hidden_size, config.vocab_size, config.num_hidden_layers, heads * head_dim
        )

    def step_flops(self, *, nonpad: float, trained: float, sum_sq_segment_len: float) -> float:
        return (
            6.0 * self.body_params * nonpad
            + 6.0 * self.hidden_size * self.vocab_size * trained
            + 6.0 * self.num_layers * self.attn_dim * sum_sq_segment_len
        )


def memory_gib() -> dict[str, float]:
    """Peak device memory allocated (CUDA) or peak resident set size of this process (CPU)."""
    if torch.cuda.is_available():
        return {"max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def clean(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats become null (JSON has no NaN)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out[key] = clean(value)
        elif isinstance(value, float):
            out[key] = _finite_or_none(value)
        else:
            out[key] = value
    return out


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


class MetricsWriter:
    """Rank 0's metrics.jsonl (one object per step) and TensorBoard event files."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, resume_step: int):
        self.path = run_dir / "metrics.jsonl"
        truncate_after(self.path, resume_step)
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"), purge_step=resume_step + 1
            )

    def write(self, record: dict[str, Any]) -> None:
        record = clean(record)
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in _flatten(record).items():
                if key not in ("step", "time") and value is not None:
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def truncate_after(path: Path, step: int) -> None:
    """Drop records of steps > ``step`` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        tmp.replace(path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
