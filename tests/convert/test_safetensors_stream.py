"""The streaming shard writer produces files the real safetensors reader loads unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from natscale.checkpoint.safetensors_stream import (
    ShardWriter,
    TensorSpec,
    check_file,
    plan_shards,
    write_index,
)


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w.f32": torch.randn(7, 5, generator=g),
        "w.bf16": torch.randn(3, 11, generator=g).to(torch.bfloat16),
        "w.f16": torch.randn(13, generator=g).to(torch.float16),
        "b.i64": torch.arange(9),
        "b.bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
    }


def specs_of(tensors):
    return [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]


def test_roundtrip_every_dtype(tmp_path):
    tensors = sample_tensors()
    specs = specs_of(tensors)
    writer = ShardWriter(tmp_path / "a.safetensors", specs, {"format": "pt"})
    for name, t in tensors.items():
        writer.write(name, t)
    writer.close()
    check_file(tmp_path / "a.safetensors", specs)
    back = load_file(tmp_path / "a.safetensors")
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name


def test_header_is_8_byte_aligned(tmp_path):
    tensors = {"x": torch.ones(3)}
    writer = ShardWriter(tmp_path / "x.safetensors", specs_of(tensors), {"format": "pt"})
    writer.write("x", tensors["x"])
    writer.close()
    raw = (tmp_path / "x.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0 and len(raw) == 8 + header_len + 12


def test_plan_matches_save_pretrained_naming(tmp_path):
    specs = [TensorSpec(f"layer{i}.weight", (256, 256), torch.float32) for i in range(5)]
    split = plan_shards(specs, "600KB")  # 256 KiB each -> 2 per shard
    assert list(split.filename_to_tensors) == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    write_index(tmp_path, split)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 256 * 256 * 4
    assert index["weight_map"]["layer4.weight"] == "model-00003-of-00003.safetensors"
    assert not plan_shards(specs, "5GB").is_sharded


def test_check_file_catches_a_wrong_plan(tmp_path):
    tensors = {"x": torch.ones(3)}
    writer = ShardWriter(tmp_path / "x.safetensors", specs_of(tensors), {})
    writer.write("x", tensors["x"])
    writer.close()
    with pytest.raises(RuntimeError, match="planned"):
        check_file(tmp_path / "x.safetensors", [TensorSpec("y", (3,), torch.float32)])
