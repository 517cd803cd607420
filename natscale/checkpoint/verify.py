"""Check an exported model against the checkpoint it came from, by logits.

The reference is independent of the converter: DeepSpeed's own ``get_fp32_state_dict_from_zero_
checkpoint`` rebuilds the fp32 master weights, which are loaded into a model built from the
exported config. Two numbers, both over the same random token sequences and in fp32 arithmetic:

- ``max_abs_diff``: exported model vs the reference weights rounded to the export dtype. The
  weights should be the same numbers, so this is 0 for a correct conversion in any dtype.
- ``max_abs_diff_vs_fp32``: exported model vs the unrounded fp32 reference: the cost of storing
  bf16/fp16 weights (0 for an fp32 export).

This loads the whole model (twice, one after the other), unlike the conversion itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from natscale.checkpoint.zero_to_hf import strip_wrapper_prefix


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    max_abs_diff_vs_fp32: float
    max_abs_logit: float
    num_sequences: int
    seq_len: int
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def _logits(model, ids_BL: torch.Tensor) -> torch.Tensor:
    """[B, L, V] float32 logits, no cache, eval mode."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids_BL, use_cache=False).logits.float()


def reference_logits(
    ckpt_dir: Path, tag: str | None, out_dir: Path, ids_BL: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits with weights rounded to ``dtype``, logits with fp32 weights), both [B, L, V] fp32."""
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    from natscale.checkpoint.safety import weights_only_loads
    from natscale.model.load import sdpa_or_eager

    sink = io.StringIO()  # DeepSpeed prints and draws progress bars while it reads
    with weights_only_loads(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    config = AutoConfig.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation=sdpa_or_eager(config)
    )
    prefix = strip_wrapper_prefix(list(sd), set(model.state_dict()))
    sd = {k[len(prefix) :]: v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    fp32 = _logits(model, ids_BL)
    if dtype == torch.float32:
        return fp32, fp32
    rounded = {
        k: v.to(dtype).to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()
    }
    model.load_state_dict(rounded, strict=True)
    return _logits(model, ids_BL), fp32


def verify_export(
    out_dir: str | Path,
    ckpt_dir: str | Path,
    *,
    tag: str | None = None,
    num_sequences: int = 4,
    seq_len: int = 32,
    seed: int = 0,
) -> VerifyResult:
    """Compare the exported model's logits with the checkpoint's own weights (see module doc)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from natscale.model.load import sdpa_or_eager, text_config

    hf_logging.disable_progress_bar()
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    config = AutoConfig.from_pretrained(out_dir)
    dtype = getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    gen = torch.Generator().manual_seed(seed)
    vocab_size = text_config(config).vocab_size
    ids_BL = torch.randint(0, vocab_size, (num_sequences, seq_len), generator=gen)
    ref_rounded, ref_fp32 = reference_logits(ckpt_dir, tag, out_dir, ids_BL, dtype)
    exported = AutoModelForCausalLM.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation=sdpa_or_eager(config)
    )
    got = _logits(exported, ids_BL)
    del exported
    max_logit = ref_fp32.abs().max().item()
    return VerifyResult(
        max_abs_diff=(got - ref_rounded).abs().max().item(),
        max_abs_diff_vs_fp32=(got - ref_fp32).abs().max().item(),
        max_abs_logit=max_logit,
        num_sequences=num_sequences,
        seq_len=seq_len,
        # same weights, same fp32 arithmetic: only kernel-order noise is tolerated
        atol=1e-5 * max(1.0, max_logit),
    )
