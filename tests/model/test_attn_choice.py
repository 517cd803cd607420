"""model.attn_implementation=auto: which attention backend packed rows get on each device."""

from __future__ import annotations

import pytest

from natscale.model.load import ModelSourceError, choose_attn_implementation


@pytest.mark.parametrize(
    ("device", "flash", "expected"),
    [
        ("cuda", True, "flash_attention_2"),
        ("cuda", False, "flex_attention"),  # never a dense masked SDPA for packed rows on GPU
        ("cpu", True, "sdpa"),
        ("cpu", False, "sdpa"),  # flex_attention on CPU: slow compile, crashes with 4D masks
    ],
)
def test_auto(device: str, flash: bool, expected: str):
    assert choose_attn_implementation("auto", device, flash_attn_installed=flash) == expected


@pytest.mark.parametrize("requested", ["sdpa", "eager", "flex_attention"])
def test_explicit_choice_is_kept(requested: str):
    for device in ("cpu", "cuda"):
        assert (
            choose_attn_implementation(requested, device, flash_attn_installed=False) == requested
        )


def test_flash_without_the_package_is_an_error():
    with pytest.raises(ModelSourceError, match="flash-attn"):
        choose_attn_implementation("flash_attention_2", "cuda", flash_attn_installed=False)
    assert (
        choose_attn_implementation("flash_attention_2", "cuda", flash_attn_installed=True)
        == "flash_attention_2"
    )


def _cls(model_type: str) -> type:
    from transformers import AutoConfig

    from natscale.model.load import model_class

    cls = model_class(AutoConfig.for_model(model_type))
    assert cls is not None
    return cls


def test_auto_picks_what_the_model_implements():
    gemma2 = _cls("gemma2")  # no sdpa in transformers: eager on CPU, flex on CUDA
    assert choose_attn_implementation("auto", "cpu", model_cls=gemma2) == "eager"
    assert (
        choose_attn_implementation("auto", "cuda", flash_attn_installed=False, model_cls=gemma2)
        == "flex_attention"
    )
    llama = _cls("llama")
    assert choose_attn_implementation("auto", "cpu", model_cls=llama) == "sdpa"


def test_a_backend_the_model_lacks_is_an_error_naming_it():
    with pytest.raises(ModelSourceError, match=r"Gemma2ForCausalLM does not implement sdpa"):
        choose_attn_implementation("sdpa", "cpu", model_cls=_cls("gemma2"))
