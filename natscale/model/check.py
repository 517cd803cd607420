"""Whether natscale trains a model family exactly: a shrunken random copy of its config, on CPU.

The same two measures as ``tests/model/test_architectures.py``, for any config a user has:

- **packed rows**: each segment of a packed row must get the last hidden states it gets alone
  (to :data:`ISOLATED` of their size; fp32 noise is about 1e-7). A family whose layers carry
  state across segments fails this and must train on rows of one example each;
- **logits**: natscale's loss (its logits head, with the family's scale and cap) must equal
  ``F.cross_entropy`` of the HF model's own logits on each segment alone. The lm_head is scaled
  up first so that a logit cap bites.

The copy keeps the config's family and its fields but shrinks the sizes that have common names
(layers, widths, heads, experts, vocabulary): a family that names its sizes otherwise may not
build, and the error says so. A feature the config leaves off is not exercised.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch

from natscale.model.load import sdpa_or_eager, text_config

ISOLATED = 1e-5  # relative hidden-state difference of a segment packed vs alone
SHRINK = {
    "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "num_experts": 4,
    "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1, "sliding_window": 8,
    "vocab_size_per_layer_input": 128, "hidden_size_per_layer_input": 8,
    # multi-head latent attention (its head_dim is the rope part: set below)
    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
    "v_head_dim": 16, "index_head_dim": 16, "index_n_heads": 2,
}  # fmt: skip
SEGMENT_LENGTHS = (11, 7, 13)


@dataclass(frozen=True)
class CheckReport:
    model_type: str
    model_class: str
    attn_implementation: str
    packed_difference: float  # worst relative hidden-state difference of a later segment
    first_difference: float  # the first segment's (nothing before it: the comparison's floor)
    logits_difference: float  # worst relative per-segment NLL difference

    @property
    def packed_ok(self) -> bool:
        return self.packed_difference < ISOLATED

    @property
    def logits_ok(self) -> bool:
        return self.logits_difference < 1e-4


def shrunk(config: Any) -> Any:
    """A copy of the (text) config with the common size fields made tiny."""
    small = copy.deepcopy(text_config(config))
    for name, value in SHRINK.items():
        _set(small, name, value)
    if _get(small, "qk_rope_head_dim") is not None:  # MLA: as many kv heads as heads
        _set(small, "head_dim", small.qk_rope_head_dim)
        _set(small, "num_key_value_heads", small.num_attention_heads)
    _set(small, "rotary_dim", 8)  # GPT-J, CodeGen: within the head
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(_get(small, name), int) and _get(small, name) >= SHRINK["vocab_size"]:
            setattr(small, name, 0)
    # one layer of each kind, in the order they come: a hybrid keeps its recurrent layers
    # (a config that derives its layer kinds from other fields keeps them as they come)
    pattern = _get(small, "layer_types")
    if isinstance(pattern, list) and pattern:
        kinds = list(dict.fromkeys(pattern))
        layers = max(len(kinds), 2)
        _set(small, "layer_types", (kinds * layers)[:layers])
        if _get(small, "layer_types") == (kinds * layers)[:layers]:
            small.num_hidden_layers = layers
            mlp = _get(small, "mlp_layer_types")
            if isinstance(mlp, list) and mlp:
                _set(small, "mlp_layer_types", (list(dict.fromkeys(mlp)) * layers)[:layers])
    small.use_cache = False
    return small


def _get(config: Any, name: str) -> Any:
    try:
        return getattr(config, name, None)
    except Exception:  # a per-layer attribute some configs refuse to give as one value
        return None


def _set(config: Any, name: str, value: Any) -> None:
    """Set a size the config has (not one it leaves unset, nor a derived property)."""
    if _get(config, name) is None:
        return
    with contextlib.suppress(AttributeError, TypeError, ValueError):  # a derived property
        setattr(config, name, value)


def check_model(config: Any, *, seed: int = 0) -> CheckReport:
    """Build a shrunken random copy of ``config`` and measure packed rows and logits."""
    from transformers import AutoModelForCausalLM

    from natscale.data.schema import IGNORE_INDEX
    from natscale.model.nat_lm import NatCausalLM
    from natscale.train.batch import collate

    small = shrunk(config)
    attn = sdpa_or_eager(small)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(small, attn_implementation=attn).float().eval()
    vocab = lm.get_input_embeddings().weight.shape[0]
    with torch.no_grad():
        lm.get_output_embeddings().weight.mul_(20.0)  # logits of tens: a cap is far from identity
    gen = torch.Generator().manual_seed(seed)
    segments = [torch.randint(3, vocab, (n,), generator=gen) for n in SEGMENT_LENGTHS]
    rows = [_row(segments)] + [_row([s]) for s in segments]
    packed, *alone = [collate([r], loss_norm="token", vocab_size=vocab) for r in rows]
    model = NatCausalLM(lm, loss="logits")
    hidden_diffs, nll_diffs = hidden_differences(model, packed, alone), []
    with torch.no_grad():
        for one in alone:  # the logits on a row of the segment alone: apart from packing
            _, seg_nll, *_ = model(**one.model_inputs("cpu"))
            logits = lm(input_ids=one.input_ids_BL, position_ids=one.position_ids_BL).logits[0]
            nll = torch.nn.functional.cross_entropy(
                logits.float(), one.targets_T, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            nll_diffs.append(float((seg_nll[0] - nll).abs() / nll.abs().clamp(min=1e-12)))
    return CheckReport(
        model_type=str(getattr(config, "model_type", "?")),
        model_class=type(lm).__name__,
        attn_implementation=attn,
        packed_difference=max(hidden_diffs[1:]),
        first_difference=hidden_diffs[0],
        logits_difference=max(nll_diffs),
    )


def hidden_differences(model: Any, packed: Any, alone: list[Any]) -> list[float]:
    """Per segment of the micro-batch ``packed`` (one row): max |last hidden state packed -
    alone| / max |alone|, ``alone`` holding each segment as a micro-batch of its own. Far more
    sensitive than the loss: a leak that moves the loss by 1e-5 shows here."""
    cu = packed.cu_seqlens.tolist()
    out = []
    with torch.no_grad():
        hidden, _ = model.hidden_states(packed.input_ids_BL, packed.position_ids_BL)
        for i, one in enumerate(alone):
            ref, _ = model.hidden_states(one.input_ids_BL, one.position_ids_BL)
            diff = (hidden[cu[i] : cu[i + 1]] - ref).abs().max() / ref.abs().max().clamp(min=1e-12)
            out.append(float(diff))
    return out


def _row(segments: list[torch.Tensor]) -> dict[str, Any]:
    """A packed row of ``segments``, every token after the first trained."""
    ids = torch.cat(segments)
    targets, positions, cu = [], [], [0]
    for seg in segments:
        targets.append(torch.cat([seg[1:], torch.tensor([-100])]))
        positions.append(torch.arange(len(seg)))
        cu.append(cu[-1] + len(seg))
    return {
        "input_ids": ids.numpy(),
        "position_ids": torch.cat(positions).numpy(),
        "targets": torch.cat(targets).numpy(),
        "cu_seqlens": cu,
        "segment_class": [0] * len(segments),
        "segment_weight": [1.0] * len(segments),
    }
