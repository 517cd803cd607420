"""Model presets match the published parameter counts (meta device: no memory, no weights)."""

from __future__ import annotations

import pytest

from natscale.bench.presets import MODEL_PRESETS, PUBLISHED_PARAMS, count_params, model_config


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_parameter_count_within_2_percent(name: str):
    assert abs(count_params(name) / PUBLISHED_PARAMS[name] - 1) < 0.02


def test_tiny_is_the_example_model():
    assert model_config("tiny")["hidden_size"] == 64
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("llama-9000")
