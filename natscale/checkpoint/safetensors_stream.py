"""Write safetensors files one tensor at a time, sharded the way ``save_pretrained`` shards.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once (it takes a dict);
for a 5 GB shard that is 5 GB of RAM on top of whatever produced the tensors. The format allows
streaming: the header (names, dtypes, shapes, byte offsets) depends only on shapes and dtypes,
which are known before any data is read. So we write the header, then each tensor's bytes as it
is produced, and let the real reader (``safetensors.safe_open``) check every finished file.

File layout (safetensors spec): 8-byte little-endian header length N, N bytes of JSON header
(padded with spaces to a multiple of 8), then the tensors' bytes back to back in header order.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: list[TensorSpec], max_shard_size: int | str):
    """Split like ``save_pretrained``: huggingface_hub's splitter over meta tensors (no data).

    Returns huggingface_hub's ``StateDictSplit`` (filename_to_tensors, tensor_to_filename,
    is_sharded, metadata with total_size).
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    meta = {s.name: torch.empty(s.shape, dtype=s.dtype, device="meta") for s in specs}
    pattern = WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")
    return split_torch_state_dict_into_shards(
        meta, filename_pattern=pattern, max_shard_size=max_shard_size
    )


class ShardWriter:
    """One safetensors file; call ``write()`` for each spec in order, then ``close()``."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str]) -> None:
        if sys.byteorder != "little":  # safetensors stores little-endian; we write raw bytes
            raise RuntimeError("streaming safetensors writer needs a little-endian machine")
        self.path = path
        self._specs = list(specs)
        self._next = 0
        header: dict[str, object] = {"__metadata__": dict(metadata)}
        offset = 0
        for s in self._specs:
            header[s.name] = {
                "dtype": SAFETENSORS_DTYPES[s.dtype],
                "shape": list(s.shape),
                "data_offsets": [offset, offset + s.nbytes],
            }
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (contiguous, CPU, the planned dtype and shape)."""
        spec = self._specs[self._next]
        assert name == spec.name, f"expected {spec.name}, got {name}"
        assert tensor.dtype == spec.dtype and tuple(tensor.shape) == spec.shape, name
        flat = tensor.contiguous().reshape(-1)
        if flat.numel():
            # zero-copy: the file write reads straight from the tensor's memory
            self._file.write(memoryview(flat.view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        assert self._next == len(self._specs), f"{self.path}: {self._next}/{len(self._specs)}"
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def check_file(path: Path, specs: list[TensorSpec]) -> None:
    """Open with the real safetensors reader (it validates the header and the offsets)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        if names != {s.name for s in specs}:
            raise RuntimeError(f"{path}: wrote {sorted(names)}, planned {[s.name for s in specs]}")
        for s in specs:
            sl = f.get_slice(s.name)
            if tuple(sl.get_shape()) != s.shape:
                raise RuntimeError(f"{path}: {s.name} has shape {sl.get_shape()}, not {s.shape}")


def write_index(out_dir: Path, split) -> None:
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
