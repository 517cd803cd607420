"""The training module against each model family's own Hugging Face logits.

``FAMILIES`` is ``natscale.model.families.CHECKED``; ``LEAKING`` its ``PACKING_LEAKS``.

For every family a tiny random model (fp32, CPU) trains on one packed row of three segments; its
loss sum and per-segment NLLs must equal ``F.cross_entropy`` of the HF model's own ``.logits`` on
each segment alone, and so must its gradients. That checks at once that packed attention stays
inside a segment (sliding windows included) and that the loss heads apply what the family does to
its lm_head output (Granite's ``logits_scaling``, Cohere's ``logit_scale``, Gemma 2's logit cap,
Phi's lm_head bias). The lm_head is scaled up so that logits reach the range where a cap bites.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from natscale.data.schema import IGNORE_INDEX
from natscale.model.check import ISOLATED, hidden_differences
from natscale.model.families import CHECKED, PACKING_LEAKS, sparse_attention_refusal
from natscale.model.logits import fused_loss_blocker, logit_transform
from natscale.model.nat_lm import NatCausalLM
from natscale.train.batch import collate
from natscale.train.metrics import FlopsModel, routed_expert_fraction
from tests.train.train_fixtures import make_segments, pack

VOCAB = 96
BASE = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
MLA = {
    "q_lora_rank": 16, "kv_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4,
    "v_head_dim": 8, "num_key_value_heads": 4,
}  # fmt: skip
GEMMA4 = {"head_dim": 8, "sliding_window": 4, "vocab_size_per_layer_input": 96,
          "hidden_size_per_layer_input": 8, "layer_types": ["sliding_attention", "full_attention"]}  # fmt: skip
DSA = {**MLA, "head_dim": 4, "index_head_dim": 8, "index_n_heads": 2, "n_routed_experts": 4,
       "num_experts_per_tok": 2, "moe_intermediate_size": 16, "first_k_dense_replace": 0,
       "n_group": 1, "topk_group": 1}  # fmt: skip
# family -> (config fields beyond BASE, attention backend, loss heads that must train it exactly)
FAMILIES = {
    "llama": ({}, "sdpa", ("fused", "logits")),
    "qwen2": ({}, "sdpa", ("fused", "logits")),
    "qwen3": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "qwen3_moe": (
        {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
        "sdpa",
        ("fused", "logits"),
    ),
    "mistral": ({"sliding_window": 4}, "sdpa", ("fused", "logits")),
    "starcoder2": ({"sliding_window": 4}, "sdpa", ("fused", "logits")),
    "phi3": ({}, "sdpa", ("fused", "logits")),
    "olmo2": ({}, "sdpa", ("fused", "logits")),
    "gemma": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "gemma3_text": ({"head_dim": 8, "sliding_window": 4}, "sdpa", ("fused", "logits")),
    "gemma3": ({}, "sdpa", ("fused", "logits")),  # OWN_FIELDS: a text and a vision config
    "gemma4_text": ({**GEMMA4}, "sdpa", ("fused", "logits")),
    "gemma4": ({}, "sdpa", ("logits",)),  # OWN_FIELDS: with a logit cap
    "granite": ({"logits_scaling": 4.0}, "sdpa", ("fused", "logits")),
    "cohere": ({"logit_scale": 0.5}, "sdpa", ("fused", "logits")),
    # a cap and a bias: the fused loss refuses them, the logits head applies them
    "gemma2": (
        {"head_dim": 8, "final_logit_softcapping": 3.0, "sliding_window": 4},
        "eager",
        ("logits",),
    ),
    "phi": ({}, "sdpa", ("logits",)),
    # families whose config names its sizes otherwise (OWN_FIELDS), and more mixtures of experts
    "gpt2": ({}, "sdpa", ("fused", "logits")),
    "gpt_bigcode": ({}, "sdpa", ("fused", "logits")),
    "gptj": ({}, "sdpa", ("logits",)),  # lm_head bias
    "codegen": ({}, "sdpa", ("logits",)),  # lm_head bias
    "gpt_neo": ({}, "eager", ("fused", "logits")),
    "gpt_neox": ({}, "sdpa", ("fused", "logits")),
    "falcon": ({}, "sdpa", ("fused", "logits")),
    "stablelm": ({}, "sdpa", ("fused", "logits")),
    "smollm3": ({}, "sdpa", ("fused", "logits")),
    "mixtral": ({"num_local_experts": 4, "num_experts_per_tok": 2}, "sdpa", ("fused", "logits")),
    "olmoe": ({"num_experts": 4, "num_experts_per_tok": 2}, "sdpa", ("fused", "logits")),
    "deepseek_v3": ({}, "sdpa", ("fused", "logits")),
    # more families, measured with transformers 5.25
    "qwen2_moe": (
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
         "shared_expert_intermediate_size": 16},
        "sdpa",
        ("fused", "logits"),
    ),
    "granitemoe": (
        {"num_local_experts": 4, "num_experts_per_tok": 2, "logits_scaling": 4.0},
        "sdpa",
        ("fused", "logits"),
    ),
    "granitemoeshared": (
        {"num_local_experts": 4, "num_experts_per_tok": 2, "shared_intermediate_size": 16,
         "logits_scaling": 4.0},
        "sdpa",
        ("fused", "logits"),
    ),
    "phimoe": ({"num_local_experts": 4, "num_experts_per_tok": 2}, "sdpa", ("fused", "logits")),
    "glm": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "glm4": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "glm4_moe": (
        {"head_dim": 8, "n_routed_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 16, "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1},
        "sdpa",
        ("fused", "logits"),
    ),
    "olmo": ({}, "sdpa", ("fused", "logits")),
    "olmo3": ({"sliding_window": 4}, "sdpa", ("fused", "logits")),
    "flex_olmo": ({"num_experts": 4, "num_experts_per_tok": 2}, "sdpa", ("fused", "logits")),
    "exaone4": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "ernie4_5": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "ernie4_5_moe": (
        {"head_dim": 8, "moe_num_experts": 4, "moe_k": 2, "moe_intermediate_size": 16},
        "sdpa",
        ("fused", "logits"),
    ),
    "hunyuan_v1_dense": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "hunyuan_v1_moe": ({"head_dim": 8, "num_experts": 4, "moe_topk": 2}, "sdpa", ("fused", "logits")),
    "helium": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "seed_oss": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "apertus": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "arcee": ({"head_dim": 8}, "sdpa", ("fused", "logits")),
    "ministral": ({"head_dim": 8, "sliding_window": 4}, "sdpa", ("fused", "logits")),
    "nemotron": ({}, "sdpa", ("fused", "logits")),
    "jetmoe": ({}, "sdpa", ("fused", "logits")),
    "llama4_text": (
        {"head_dim": 8, "num_local_experts": 4, "num_experts_per_tok": 1,
         "intermediate_size_mlp": 64},
        "sdpa",
        ("fused", "logits"),
    ),
    "cohere2": ({"sliding_window": 4, "logit_scale": 0.5}, "sdpa", ("fused", "logits")),
    "hyperclovax": ({"logits_scaling": 0.25}, "sdpa", ("fused", "logits")),  # multiplies
    "vaultgemma": ({"head_dim": 8, "final_logit_softcapping": 3.0}, "eager", ("logits",)),
    "nanochat": ({"final_logit_softcapping": 3.0}, "sdpa", ("logits",)),
    # multi-head latent attention (MLA)
    "deepseek_v2": (
        {**MLA, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
         "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1},
        "sdpa",
        ("fused", "logits"),
    ),
    "minicpm3": (  # divides the hidden states by hidden_size / dim_model_base = 2
        {**MLA, "scale_emb": 12, "dim_model_base": 16, "scale_depth": 1.4},
        "sdpa",
        ("fused", "logits"),
    ),
    # DeepSeek Sparse Attention: exact while a row is no longer than index_topk (the test below)
    "deepseek_v32": ({**DSA, "index_topk": 64}, "sdpa", ("fused", "logits")),
    "dots1": (
        {"head_dim": 8, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
         "moe_intermediate_size": 16, "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1},
        "sdpa",
        ("fused", "logits"),
    ),
}  # fmt: skip
# newer families, sized by the common fields (a MoE's expert fields under each family's name)
ANY_MOE = {"num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
           "moe_intermediate_size": 16, "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1}  # fmt: skip
DENSE_MORE = ("apertus1p5_text", "aria_text", "bitnet", "cwm", "diffllama", "doge", "exaone",
              "flint", "gpt_neox_japanese", "granite_swa", "internlm3", "iquestcoder", "jais2",
              "ministral3", "persimmon")  # fmt: skip
MOE_MORE = ("cohere2_moe", "ergo", "exaone_moe", "granitemoe_swa", "hy_v3",
            "laguna", "mellum", "mimo_v2_flash", "minicpm5_moe", "minimax_m2", "param2moe",
            "sarvam_moe", "solar_open")  # fmt: skip
NO_SDPA = {"flint", "gpt_neox_japanese", "granite_swa", "granitemoe_swa",
           "mimo_v2_flash"}  # fmt: skip
for _name in DENSE_MORE + MOE_MORE:
    _fields = {"head_dim": 8, **(ANY_MOE if _name in MOE_MORE else {})}
    FAMILIES[_name] = (_fields, "eager" if _name in NO_SDPA else "sdpa", ("fused", "logits"))
GPT = {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}
OWN_FIELDS = {
    "gpt2": GPT,
    "gpt_bigcode": GPT,
    "gptj": {**GPT, "rotary_dim": 4},
    "codegen": {**GPT, "rotary_dim": 4, "n_ctx": 128},
    "gpt_neo": {
        "vocab_size": VOCAB, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
        "attention_types": [[["global", "local"], 1]], "window_size": 4,
        "max_position_embeddings": 128,
    },
    "falcon": {
        "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "new_decoder_architecture": False,
    },
    "gemma4": {
        "text_config": {**BASE, **GEMMA4, "final_logit_softcapping": 3.0},
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2},
    },
    "gemma3": {  # the multimodal model (Gemma 3 4B and up), text only
        "text_config": {**BASE, "head_dim": 8, "sliding_window": 4},
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        "mm_tokens_per_image": 4,
    },
    "deepseek_v3": {
        **BASE, "num_hidden_layers": 1, "num_key_value_heads": 4, "n_routed_experts": 4,
        "num_experts_per_tok": 2, "moe_intermediate_size": 16, "first_k_dense_replace": 0,
        "q_lora_rank": 16, "kv_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4,
        "v_head_dim": 8, "n_group": 1, "topk_group": 1,
    },
}  # fmt: skip
EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
# transformers' attention lets a packed segment see the ones before it (natscale refuses them)
LEAKING = {
    "opt": {
        "vocab_size": VOCAB, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 128, "word_embed_proj_dim": 32,
    },
    "bloom": {"vocab_size": VOCAB, "hidden_size": 32, "n_layer": 2, "n_head": 4},
    "mpt": {"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 128},
    "gpt_oss": {
        **BASE, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8,
        "sliding_window": 4,
    },
    "biogpt": BASE,
    "xglm": BASE,
    # recurrent state (state-space, linear attention, short convolutions) runs across segments
    "mamba": {**BASE, "state_size": 4},
    "mamba2": {**BASE, "num_heads": 4, "head_dim": 16, "state_size": 4, "n_groups": 1},
    "falcon_mamba": {**BASE, "state_size": 4},
    "jamba": {
        **BASE, "num_experts": 2, "num_experts_per_tok": 1, "attn_layer_period": 2,
        "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
        "mamba_d_state": 4, "mamba_expand": 2, "mamba_dt_rank": 4, "use_mamba_kernels": False,
    },
    "bamba": {
        **BASE, "mamba_d_state": 4, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 1,
        "attn_layer_indices": [1],
    },
    "granitemoehybrid": {
        **BASE, "layer_types": ["mamba", "attention"], "mamba_d_state": 4, "mamba_n_heads": 4,
        "mamba_d_head": 16, "mamba_n_groups": 1, "num_local_experts": 0,
    },
    "falcon_h1": {
        **BASE, "mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 4,
        "mamba_n_groups": 1, "head_dim": 8,
    },
    "zamba2": {
        **BASE, "mamba_d_state": 4, "mamba_headdim": 16, "n_mamba_heads": 4,
        "layers_block_type": ["mamba", "hybrid"], "num_mem_blocks": 1,
    },
    "nemotron_h": {
        **BASE, "hybrid_override_pattern": "M*", "mamba_num_heads": 4, "mamba_head_dim": 16,
        "ssm_state_size": 4, "n_groups": 1, "head_dim": 8,
    },
    "recurrent_gemma": BASE,
    "qwen3_next": {
        **BASE, "head_dim": 8, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
        "linear_key_head_dim": 8, "linear_value_head_dim": 8, "num_experts": 4,
        "num_experts_per_tok": 2, "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 16, "layer_types": ["linear_attention", "full_attention"],
    },
    "minimax": {**BASE, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8},
    "lfm2": {**BASE, "layer_types": ["conv", "full_attention"], "conv_L_cache": 3},
    "lfm2_moe": {
        **BASE, "layer_types": ["conv", "full_attention"], "conv_L_cache": 3, **EXPERTS,
        "num_dense_layers": 0,
    },
    "lfm3": {**BASE, "head_dim": 8},
    "zaya": {**BASE, "head_dim": 8, **EXPERTS, "num_experts_per_tok": 1},
    "qwen3_5_text": {**BASE, "head_dim": 8},
    "qwen3_5_moe_text": {**BASE, "head_dim": 8, **EXPERTS, "shared_expert_intermediate_size": 16},
    "qwen4_exp_text": {**BASE, "head_dim": 8, **EXPERTS, "shared_expert_intermediate_size": 16},
    "olmo_hybrid": {**BASE, "head_dim": 8},
    "kimi_linear": {**BASE, **EXPERTS, "num_experts_per_token": 2},
    "bailing_hybrid": {**BASE, "head_dim": 8},
    "lara_mini": {**BASE, "head_dim": 8, **EXPERTS, "shared_expert_intermediate_size": 16},
    "deepseek_v4": {
        **BASE, "head_dim": 8, **ANY_MOE,
        "layer_types": ["heavily_compressed_attention", "compressed_sparse_attention"],
    },
    "afmoe": {**BASE, "head_dim": 8, **EXPERTS, "num_dense_layers": 0, "sliding_window": 4},
}  # fmt: skip
# multimodal families refused with their text model, whose class is the same (their config
# nests a full-size text config that this test does not build)
LEAKING_AS = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text",
              "qwen4_exp": "qwen4_exp_text"}  # fmt: skip


def _family(name: str):
    fields, attn, heads = FAMILIES[name]
    config = AutoConfig.for_model(name, **OWN_FIELDS.get(name, {**BASE, **fields}))
    config.use_cache = False
    torch.manual_seed(0)
    # eval(): no dropout (GPT-2 and OPT default to 0.1), so two forwards can be compared
    lm = AutoModelForCausalLM.from_config(config, attn_implementation=attn).float().eval()
    with torch.no_grad():
        head = lm.get_output_embeddings()
        head.weight.mul_(20.0)  # logits of tens: a cap of 3 is far from the identity
        if getattr(head, "bias", None) is not None:
            head.bias.uniform_(-2.0, 2.0)  # HF initialises it to zero
    return lm, heads


def _reference(lm, segs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sum of F.cross_entropy of the HF model's own logits, each segment run alone."""
    total, per_segment = torch.zeros(()), []
    for seg in segs:
        mb = collate([pack([seg], len(seg[0]))], loss_norm="token", vocab_size=VOCAB)
        out = lm(input_ids=mb.input_ids_BL, position_ids=mb.position_ids_BL, use_cache=False)
        nll = torch.nn.functional.cross_entropy(
            out.logits[0].float(), mb.targets_T, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        per_segment.append(nll.detach())
        total = total + nll
    return total, per_segment


def _hidden_differences(lm, segs, mb) -> list[float]:
    """natscale.model.check's measure, per segment of the packed row ``mb``."""
    alone = [collate([pack([s], len(s[0]))], loss_norm="token", vocab_size=VOCAB) for s in segs]
    return hidden_differences(NatCausalLM(lm, loss="logits"), mb, alone)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_packed_loss_and_gradients_equal_the_hf_models_own(name: str):
    lm, heads = _family(name)
    segs = make_segments(3, seed=5, max_len=12)
    mb = collate([pack(segs, 40)], loss_norm="token", vocab_size=VOCAB)
    assert max(_hidden_differences(lm, segs, mb)) < ISOLATED, "a packed segment sees another"
    _assert_trains_like_hf(lm, segs, mb, [(f"model.loss={h}", {"loss": h}) for h in heads])


def _assert_trains_like_hf(lm, segs, mb, variants: list[tuple[str, dict]]) -> None:
    """For each (label, NatCausalLM kwargs): the loss sum, per-segment NLLs and every gradient
    of ``mb`` equal those of the HF model's own logits on each segment alone."""
    lm.zero_grad()
    expected, expected_segments = _reference(lm, segs)
    expected.backward()
    want = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    assert want, "the reference produced no gradients"
    for label, kwargs in variants:
        model = NatCausalLM(lm, **kwargs)
        lm.zero_grad()
        got, seg_nll, *_ = model(**mb.model_inputs("cpu"))
        got.backward()
        msg = f"{lm.config.model_type} with {label}"
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=msg)
        torch.testing.assert_close(
            seg_nll, torch.stack(expected_segments), rtol=1e-4, atol=1e-4, msg=msg
        )
        for param, grad in want.items():
            torch.testing.assert_close(
                dict(lm.named_parameters())[param].grad,
                grad,
                rtol=1e-3,
                atol=1e-5 * max(1.0, grad.abs().max().item()),  # tied to a head scaled x20
                msg=f"{msg}: {param}",
            )


# mixtures of experts that a family's FAMILIES entry leaves dense
MOE_VARIANTS = {
    "gemma4_text": {**BASE, **GEMMA4, "enable_moe_block": True, "num_experts": 4,
                    "top_k_experts": 2, "moe_intermediate_size": 16},
}  # fmt: skip


FLOPS_CASES = {n: OWN_FIELDS.get(n, {**BASE, **FAMILIES[n][0]}) for n in sorted(FAMILIES)}
FLOPS_CASES |= {f"{n}-experts": f for n, f in sorted(MOE_VARIANTS.items())}


@pytest.mark.parametrize("name", FLOPS_CASES)
def test_the_flops_model_reads_every_family(name: str):
    """`natscale train` builds a FlopsModel for MFU: it must read every family's config (Gemma
    4's per-layer head_dim crashed it), and a model with routed ``experts`` must count only the
    ones a token runs through (Aria's moe_topk / moe_num_experts were not read: MFU 4x too high
    in its expert layers). Built on the meta device: no memory, no init."""
    config = AutoConfig.for_model(name.removesuffix("-experts"), **FLOPS_CASES[name])
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    flops = FlopsModel.from_model(lm, config)
    assert flops.body_params > 0 and flops.attn_dim > 0 and flops.num_layers > 0
    routed = [n for n, _ in lm.named_parameters() if "experts" in n.split(".")]
    if routed:
        assert routed_expert_fraction(config) < 1, (
            f"{name} has routed experts ({routed[0]}) but no top-k / experts count that "
            "natscale.train.metrics reads: add its names to EXPERTS_PER_TOKEN / EXPERTS_TOTAL"
        )


def test_the_checked_families_are_the_ones_natscale_lists():
    assert set(FAMILIES) == CHECKED
    assert not set(LEAKING) & CHECKED and set(LEAKING) | set(LEAKING_AS) == set(PACKING_LEAKS)
    assert set(LEAKING_AS.values()) <= set(LEAKING)


@pytest.mark.parametrize("name", sorted(LEAKING))
def test_families_whose_packed_rows_leak_still_leak(name: str):
    """A canary: the day transformers isolates packed rows for one of these, this fails, and
    the family can move from PACKING_LEAKS to CHECKED (and FAMILIES above)."""
    config = AutoConfig.for_model(name, **LEAKING[name])
    config.use_cache = False
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    segs = make_segments(3, seed=5, max_len=12)
    mb = collate([pack(segs, 40)], loss_norm="token", vocab_size=VOCAB)
    first, *later = _hidden_differences(lm, segs, mb)
    assert first < ISOLATED  # the first segment has nothing before it: the comparison is sound
    assert max(later) > ISOLATED


@pytest.mark.parametrize("name", ["gemma2", "phi", "gptj", "codegen"])
def test_the_fused_loss_refuses_what_it_cannot_compute(name: str):
    lm, _ = _family(name)
    assert fused_loss_blocker(lm.config, lm.get_output_embeddings()) is not None
    with pytest.raises(ValueError, match=r"model\.loss: logits"):
        NatCausalLM(lm, loss="fused")


def test_transforms_read_from_the_config():
    granite = AutoConfig.for_model("granite", logits_scaling=8.0)
    assert logit_transform(granite).scale == 1 / 8
    hyperclovax = AutoConfig.for_model("hyperclovax", logits_scaling=0.25)  # multiplies
    assert logit_transform(hyperclovax).scale == 0.25
    cohere = AutoConfig.for_model("cohere", logit_scale=0.0625)
    assert logit_transform(cohere).scale == 0.0625
    recurrent_gemma = AutoConfig.for_model("recurrent_gemma")  # logits_soft_cap, default 30
    assert logit_transform(recurrent_gemma).softcap == 30.0
    head = torch.nn.Linear(4, 8, bias=False)
    assert "(logits_soft_cap=30)" in fused_loss_blocker(recurrent_gemma, head)
    gemma2 = AutoConfig.for_model("gemma2")  # the family's default cap: 30
    assert logit_transform(gemma2).softcap == 30.0
    plain = logit_transform(AutoConfig.for_model("llama"))
    assert plain.scale == 1.0 and plain.softcap is None and plain.fields == ()


@pytest.mark.parametrize("name", ["deepseek_v32", "glm_moe_dsa"])
def test_sparse_attention_mixes_segments_once_a_row_exceeds_index_topk(name: str):
    """The indexer keeps the top ``index_topk`` keys of the whole row: rows no longer than that
    are exact, longer ones are not (preflight refuses data whose rows exceed it)."""
    segs = make_segments(3, seed=5, max_len=12)
    mb = collate([pack(segs, 40)], loss_norm="token", vocab_size=VOCAB)
    for topk, exact in ((40, True), (8, False)):
        config = AutoConfig.for_model(name, **{**BASE, **DSA, "index_topk": topk})
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()
        assert (max(_hidden_differences(lm, segs, mb)) < ISOLATED) == exact, f"index_topk={topk}"
        assert (sparse_attention_refusal(config, 40) is None) == exact


@pytest.mark.parametrize(
    "name", ["opt", "bloom", "gpt_oss", "mamba", "qwen3_5_text", "lfm2", "afmoe", "deepseek_v32"]
)
def test_refused_families_train_exactly_on_rows_of_one_example(name: str):
    """pack.algorithm: none: rows of one segment each, of different lengths (so padded in the
    micro-batch), under NatCausalLM as the trainer builds it for flash-attn (flatten_rows, which
    such rows skip): loss and gradients equal the HF model's own on each segment alone."""
    fields = {**BASE, **DSA, "index_topk": 4} if name == "deepseek_v32" else LEAKING[name]
    config = AutoConfig.for_model(name, **fields)
    config.use_cache = False
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    segs = make_segments(3, seed=5, max_len=12)
    mb = collate([pack([s], 16) for s in segs], loss_norm="token", vocab_size=VOCAB)
    assert mb.input_ids_BL.shape == (3, max(len(s[0]) for s in segs))  # cut to the longest
    _assert_trains_like_hf(
        lm, segs, mb, [("flatten_rows", {"loss": "logits", "flatten_rows": True})]
    )
