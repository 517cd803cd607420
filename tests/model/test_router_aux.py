"""An MoE model's router load-balancing loss, against the HF model's own ``aux_loss``.

A packed micro-batch (two rows of different lengths, so with padding inside rows and between
them) must give the ``aux_loss`` that the HF ``*ForCausalLM`` computes on the same segments
padded into a batch with an attention mask, and the objective ``NLL / trained tokens + coef *
aux`` the gradients of HF's own objective (``F.cross_entropy`` of its logits, token mean, plus
``coef * aux_loss``), for every parameter, the routers included.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from natscale.data.schema import IGNORE_INDEX
from natscale.model.nat_lm import NatCausalLM
from natscale.model.router import resolve_router_aux, router_aux_default
from natscale.train.batch import collate
from tests.model.test_architectures import BASE, VOCAB
from tests.train.train_fixtures import make_segments, pack

MOE = {
    "qwen3_moe": {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 16},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
}  # fmt: skip
COEF = 0.5  # far above the usual 0.001-0.01, so a wrong router gradient shows


def _moe(name: str, **fields):
    config = AutoConfig.for_model(name, **BASE, **MOE[name], **fields)
    config.use_cache = False
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()


def _hf_objective(lm, segs) -> tuple[torch.Tensor, torch.Tensor]:
    """(HF's token-mean NLL of the segments, padded into one batch, + COEF * aux; its aux)."""
    alone = [collate([pack([s], len(s[0]))], loss_norm="token", vocab_size=VOCAB) for s in segs]
    length = max(mb.input_ids_BL.shape[1] for mb in alone)
    ids = torch.zeros(len(segs), length, dtype=torch.long)
    mask = torch.zeros(len(segs), length, dtype=torch.long)
    targets = torch.full((len(segs), length), IGNORE_INDEX)
    for b, mb in enumerate(alone):
        n = mb.input_ids_BL.shape[1]
        ids[b, :n], mask[b, :n], targets[b, :n] = mb.input_ids_BL[0], 1, mb.targets_T
    out = lm(input_ids=ids, attention_mask=mask, output_router_logits=True, use_cache=False)
    nll = torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
    )
    return nll + COEF * out.aux_loss, out.aux_loss.detach()


@pytest.mark.parametrize("name", sorted(MOE))
@pytest.mark.parametrize("loss", ["fused", "logits"])
def test_packed_router_loss_and_gradients_equal_the_hf_models_own(name: str, loss: str):
    lm = _moe(name)
    segs = make_segments(5, seed=3, max_len=12)
    mb = collate([pack(segs[:3], 40), pack(segs[3:], 30)], loss_norm="token", vocab_size=VOCAB)
    assert not mb.nonpad_T.all(), "the micro-batch must hold padding for this test to bite"
    lm.zero_grad()
    expected, expected_aux = _hf_objective(lm, segs)
    expected.backward()
    want = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    assert any(".gate." in n or "router" in n for n in want), sorted(want)

    model = NatCausalLM(lm, loss=loss, router_aux_loss_coef=COEF)
    lm.zero_grad()
    loss_sum, _, _, aux = model(**mb.model_inputs("cpu"))
    torch.testing.assert_close(aux.detach(), expected_aux, rtol=1e-5, atol=1e-6)
    (loss_sum / mb.num_trained_tokens + model.router_aux.coef * aux).backward()
    params = dict(lm.named_parameters())
    for param, grad in want.items():
        torch.testing.assert_close(params[param].grad, grad, rtol=1e-3, atol=1e-6, msg=param)


def test_padding_is_left_out_of_the_router_loss():
    lm = _moe("qwen3_moe")
    model = NatCausalLM(lm, router_aux_loss_coef=COEF)
    mb = collate(
        [pack(make_segments(2, seed=4, max_len=12), 40)], loss_norm="token", vocab_size=VOCAB
    )
    inputs = mb.model_inputs("cpu")
    with torch.no_grad():
        masked = model(**inputs)[3]
        unmasked = model(**{**inputs, "nonpad": None})[3]
    assert not torch.allclose(masked, unmasked)


def test_what_turns_the_router_loss_on():
    assert resolve_router_aux(_moe("qwen3_moe"), None) is None  # HF's default: off
    on = _moe("qwen3_moe", output_router_logits=True, router_aux_loss_coef=0.02)
    assert router_aux_default(on.config) == 0.02
    router = resolve_router_aux(on, None)
    assert (router.coef, router.num_experts, router.top_k) == (0.02, 4, 2)
    assert resolve_router_aux(on, 0.0) is None  # 0 turns it off
    assert resolve_router_aux(_moe("mixtral"), 0.1).coef == 0.1  # on without the config flag
    # off: the forward asks the model for no router logits and returns None in their place
    mb = collate(
        [pack(make_segments(2, seed=4, max_len=12), 40)], loss_norm="token", vocab_size=VOCAB
    )
    assert NatCausalLM(_moe("qwen3_moe"))(**mb.model_inputs("cpu"))[3] is None


def test_a_dense_model_has_no_router_loss_to_turn_on():
    config = AutoConfig.for_model("llama", **BASE)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    assert resolve_router_aux(lm, None) is None and resolve_router_aux(lm, 0.0) is None
    with pytest.raises(ValueError, match=r"llama \(LlamaForCausalLM\) computes no router"):
        NatCausalLM(lm, router_aux_loss_coef=0.01)
