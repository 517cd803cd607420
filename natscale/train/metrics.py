"""Per-step metrics: token rates counted three ways, MFU, memory; JSONL and TensorBoard writers.

Token counts of a step (summed over all micro-batches and ranks):
    slot     B * L of every micro-batch: the tokens the model processes, padding included
    nonpad   tokens of real segments (cu_seqlens[-1] per row)
    trained  tokens whose loss is trained (targets != -100)
Rates are per device: count / step wall time / world size.

MFU (model FLOPs utilisation; docs/training.md gives the derivation):
    flops_step = 6 * N_body * nonpad                    dense layers, forward + backward
               + 6 * H * V * trained                    lm_head: only trained tokens reach it
               + 6 * sum_layers d_attn * sum_seg(L_seg^2)   attention, per packed segment, causal-halved
    MFU = flops_step / step_time / world_size / peak_flops_per_device
N_body counts every parameter except embeddings (lookup tables: the input's, Gemma 4's per-layer
ones, GPT-2's positions) and the lm_head (of a mixture of experts,
the routed experts a token runs through: top-k / experts of them, routed_expert_fraction); d_attn =
heads * head_dim, or heads * (d_qk + d_v) / 2 for multi-head latent attention, each layer's own
where its config says (Gemma 4's full layers have wider heads); a sliding-window or chunked layer
counts the pairs it computes (attended_sq), not L_seg^2.
Activation-checkpointing recompute is not counted (that would be HFU).
"""

from __future__ import annotations

import json
import math
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from natscale.atomic import atomic_write_text
from natscale.checkpoint.layout import RunDir
from natscale.model.load import text_config

# dense bf16 tensor-core peak, FLOP/s per device (datasheets; half the "with sparsity" figures).
# The longest name contained in the device's name wins, so "H200 NVL" beats "H200" and "GB200"
# beats "B200" whatever the order; listed most specific first all the same.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),  # SXM
    ("GB200", 2500e12),
    ("B200", 2250e12),  # HGX
    ("A100", 312e12),
    ("L40S", 362e12),
]


def device_peak(name: str) -> float | None:
    """The dense bf16 peak of the device called ``name`` (torch.cuda.get_device_name), or None:
    the entry of :data:`PEAK_BF16_FLOPS` with the longest name contained in it."""
    matches = [(len(key), peak) for key, peak in PEAK_BF16_FLOPS if key in name]
    return max(matches)[1] if matches else None


def peak_flops(override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s per device or None, a label naming the device and where the peak came from)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if override_tflops is not None:
        return override_tflops * 1e12, f"{name} (peak {override_tflops:g} TFLOP/s from config)"
    peak = device_peak(name)
    if peak is not None:
        return peak, f"{name} (peak {peak / 1e12:g} TFLOP/s bf16 dense)"
    return None, f"{name} (peak unknown: set logging.peak_tflops for MFU)"


# how a mixture of experts' config names the experts a token runs through, and all of them
EXPERTS_PER_TOKEN = ("num_experts_per_tok", "moe_topk", "top_k_experts", "moe_k")
EXPERTS_TOTAL = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def routed_expert_fraction(config: Any) -> float:
    """The share of a mixture-of-experts layer's routed experts that each token runs through:
    top-k / experts, named ``num_experts_per_tok`` (``moe_topk`` in Aria and Hunyuan,
    ``top_k_experts`` in Gemma 4, ``moe_k`` in ERNIE) over ``num_local_experts``,
    ``num_experts``, ``n_routed_experts`` or ``moe_num_experts``; the mean over layers where a
    layer's config says otherwise; 1 for a dense model. Shared experts and the router are outside
    the ``experts`` module and always count whole."""
    text = text_config(config)
    fractions = []
    for layer in layer_configs(text):
        top_k = next((getattr(layer, k) for k in EXPERTS_PER_TOKEN if getattr(layer, k, None)), 0)
        total = next((getattr(layer, k) for k in EXPERTS_TOTAL if getattr(layer, k, None)), 0)
        fractions.append(min(1.0, int(top_k) / int(total)) if top_k and total else 1.0)
    return sum(fractions) / len(fractions) if fractions else 1.0


def layer_configs(text: Any) -> list[Any]:
    """The config of each decoder layer: ``per_layer_config[i]`` (transformers 5's heterogeneous
    configs, where Gemma 4's ``head_dim`` is 256 in a sliding layer and 512 in a full one and
    reading it from the model's config raises), else the config itself for every layer."""
    layers = text.num_hidden_layers
    per_layer = getattr(text, "per_layer_config", None)
    if per_layer is None:
        return [text] * layers
    return [per_layer[i] for i in range(layers)]


def attention_width(layer: Any) -> float:
    """``d_attn`` of a layer: heads * head_dim, or heads * (d_qk + d_v) / 2 for multi-head latent
    attention (DeepSeek-V2/V3, MiniCPM3), whose ``head_dim`` is the rope part only: QK^T runs over
    nope + rope, AV over v_head_dim."""
    heads = layer.num_attention_heads
    head_dim = getattr(layer, "head_dim", None) or layer.hidden_size // heads
    d_qk = (getattr(layer, "qk_nope_head_dim", 0) or 0) + (
        getattr(layer, "qk_rope_head_dim", 0) or 0
    )
    d_v = getattr(layer, "v_head_dim", None)
    return heads * (d_qk + d_v) / 2 if d_qk and d_v else heads * head_dim


def _attention_kind(text: Any, layer: Any, index: int) -> tuple[str, int | None]:
    """(kind, window or chunk size) of layer ``index``: ``full``, or ``sliding`` / ``chunked``
    where ``layer_types`` says so (a config with ``sliding_window`` and no ``layer_types``,
    Mistral's, slides in every layer). Other kinds count as full."""
    window = getattr(layer, "sliding_window", None)
    chunk = getattr(layer, "attention_chunk_size", None)
    types = getattr(text, "layer_types", None)
    if not types:
        return ("sliding", int(window)) if window else ("full", None)
    if types[index] == "sliding_attention" and window:
        return "sliding", int(window)
    if types[index] == "chunked_attention" and chunk:
        return "chunked", int(chunk)
    return "full", None


def _attention_layers(text: Any) -> tuple[float, tuple[tuple[str, int | None, int, int], ...]]:
    """(d_attn unit, the decoder's attention layers as (kind, window or chunk size, how many,
    their d_attn in units)): the unit is the layers' common d_attn, or the greatest common divisor
    of their widths where they differ (Gemma 4's full layers are twice as wide as its sliding
    ones: weight 2 and 1)."""
    layers = layer_configs(text)
    widths = [attention_width(layer) for layer in layers]
    if len(set(widths)) <= 1:
        unit = widths[0] if widths else 0.0
    else:  # heads * head_dim, or a half of heads * (d_qk + d_v): an integer number of halves
        halves = math.gcd(*(round(2 * w) for w in widths))
        unit = halves // 2 if halves % 2 == 0 else halves / 2
    counts: dict[tuple[str, int | None, int], int] = {}
    for index, (layer, width) in enumerate(zip(layers, widths, strict=True)):
        key = (*_attention_kind(text, layer, index), round(width / unit) if unit else 1)
        counts[key] = counts.get(key, 0) + 1
    order = {"full": 0, "sliding": 1, "chunked": 2}
    groups = sorted(counts.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] or 0, kv[0][2]))
    return unit, tuple((kind, size, n, weight) for (kind, size, weight), n in groups)


def attended_sq(lengths: np.ndarray, kind: str, size: int | None) -> int:
    """Twice the causal (query, key) pairs of segments of ``lengths`` that a layer computes, in
    the L^2 units of the full causal layer: L^2 full; within a window W, L^2 up to W, then W^2 for
    the first W queries and 2W for each query after (2LW - W^2); in chunks of C, C^2 per full
    chunk plus the rest squared."""
    n = lengths.astype(np.int64)
    if kind == "sliding":
        w = np.int64(size)
        return int(np.where(n <= w, n * n, 2 * n * w - w * w).sum())
    if kind == "chunked":
        c = np.int64(size)
        return int(((n // c) * c * c + (n % c) ** 2).sum())
    return int((n * n).sum())


@dataclass(frozen=True)
class FlopsModel:
    body_params: int
    hidden_size: int
    vocab_size: int
    num_layers: int
    # d_attn = heads * head_dim (heads * (d_qk + d_v) / 2 for MLA); where layers differ, the
    # unit their widths are whole multiples of (attn_layers gives each layer's multiple)
    attn_dim: float
    # (kind, size, how many, d_attn in units of attn_dim); () all full, of width attn_dim
    attn_layers: tuple[tuple[str, int | None, int, int], ...] = ()

    @classmethod
    def from_model(cls, lm: torch.nn.Module, config: Any) -> FlopsModel:
        skip = {id(lm.get_input_embeddings().weight), id(lm.get_output_embeddings().weight)}
        active = routed_expert_fraction(config)
        # the language model only: a multimodal model's vision tower does not run on text
        decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
        # every lookup table does no multiply-add: Gemma 4's per-layer embeddings (2.0 of its
        # 4.5B body parameters by default) and GPT-2's position embedding, as the input's
        skip |= {
            id(p)
            for m in decoder.modules()
            if isinstance(m, torch.nn.Embedding)
            for p in m.parameters(recurse=False)
        }
        body = 0.0
        for name, p in decoder.named_parameters():
            if id(p) in skip:
                continue
            numel = getattr(p, "ds_numel", p.numel())  # the whole tensor under ZeRO-3
            body += numel * active if "experts" in name.split(".") else numel
        text = text_config(config)
        attn_dim, attn_layers = _attention_layers(text)
        return cls(
            round(body),
            text.hidden_size,
            text.vocab_size,
            text.num_hidden_layers,
            attn_dim,
            attn_layers,
        )

    def layer_sum_sq(self, lengths: np.ndarray) -> int:
        """Sum over attention layers and segments of ``lengths`` of what each layer attends
        (:func:`attended_sq`), in units of ``attn_dim`` (a layer twice as wide counts twice):
        ``num_layers * sum L^2`` when every layer is full and as wide."""
        groups = self.attn_layers or (("full", None, self.num_layers, 1),)
        return sum(
            count * weight * attended_sq(lengths, kind, size)
            for kind, size, count, weight in groups
        )

    def step_flops(
        self,
        *,
        nonpad: float,
        trained: float,
        sum_sq_segment_len: float,
        layer_sum_sq: float | None = None,
    ) -> float:
        """FLOPs of a step; ``layer_sum_sq`` (:meth:`layer_sum_sq`, summed over the step) counts
        windowed layers right, else every layer is full: ``num_layers * sum_sq_segment_len``."""
        if layer_sum_sq is None:
            layer_sum_sq = self.num_layers * sum_sq_segment_len
        return (
            6.0 * self.body_params * nonpad
            + 6.0 * self.hidden_size * self.vocab_size * trained
            + 6.0 * self.attn_dim * layer_sum_sq
        )


def time_weighted(records: list[dict[str, Any]], key: str) -> float | None:
    """``key`` over steps as one measurement, sum(value * step_time) / sum(step_time): for a
    rate such as TFLOP/s or MFU, all FLOPs over all time. A plain mean of the steps' ratios lets
    a slow step count as much as a fast one. Steps where ``key`` is None are left out; None when
    none is timed."""
    known = [r for r in records if r.get(key) is not None]
    total = sum(r["step_time_s"] for r in known)
    return sum(r[key] * r["step_time_s"] for r in known) / total if total > 0 else None


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
        self.path = RunDir(run_dir).metrics
        self.notes = truncate_after(self.path, resume_step)  # for the caller to print
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(RunDir(run_dir).tensorboard), purge_step=resume_step + 1
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


class MetricsFileError(ValueError):
    """A line of metrics.jsonl that is not a JSON object (other than a partial last line)."""


def parse_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(the records of ``path``, a note when its last line was cut off and is left out).

    A process killed while writing leaves a last line without its newline, or with text that is
    not JSON: that line is reported in the note, not parsed. Any other bad line raises
    :class:`MetricsFileError` naming the file and line.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # tail: after the last newline ("" if none)
    records: list[dict[str, Any]] = []
    note = None
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if number == len(complete) and not tail.strip():
                note = f"{path}: line {number} is cut off (a write that was interrupted); left out"
                break
            raise MetricsFileError(
                f"{path}, line {number}: not a JSON object ({exc}); the file was edited or "
                "damaged: remove or repair that line"
            ) from exc
        if not isinstance(record, dict):
            raise MetricsFileError(f"{path}, line {number}: not a JSON object")
        records.append(record)
    if tail.strip():
        note = (
            f"{path}: line {len(complete) + 1} is cut off (no newline: a write that was "
            "interrupted); left out"
        )
    return records, note


def truncate_after(path: Path, step: int) -> list[str]:
    """Drop records of steps > ``step`` (written after the checkpoint a resumed run starts from)
    and a cut-off last line; returns notes saying what was dropped."""
    if not path.is_file():
        return []
    records, note = parse_metrics(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    notes = [note.replace("; left out", "; removed")] if note else []
    if len(kept) != len(records):
        since = f"the checkpoint of step {step} this run resumes from" if step else "step 0"
        last = records[-1].get("step")
        steps = f"step {last}" if last == step + 1 else f"steps {step + 1}-{last}"
        notes.append(f"{path}: removed the records of {steps}, written after {since}")
    if notes:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return notes


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of RUN_DIR/metrics.jsonl; a cut-off last line is left out with a warning."""
    path = RunDir(run_dir).metrics
    records, note = parse_metrics(path)
    if note:
        print(f"natscale: warning: {note}", file=sys.stderr)
    return records
