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
