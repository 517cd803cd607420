"""Full fp32 tensors of a ZeRO checkpoint, one at a time, through DeepSpeed's own reader.

DeepSpeed's ``deepspeed.utils.zero_to_fp32`` knows the checkpoint layout: it memory-maps the
optimizer files, and in lazy mode returns, per parameter, a ``GatheredTensor`` (ZeRO-3) that
concatenates that parameter's slices from every rank only when asked. We use it as is and add what
keeps the peak memory at one tensor instead of the whole model:

- ZeRO-1/2: DeepSpeed concatenates every rank's partition into one full fp32 vector before slicing
  it (``_zero2_merge_trainable_params``: "memory usage doubles here"). We run that same function on
  *meta* copies of the partitions, which gives every parameter's offset and shape with no data, and
  then read each parameter's bytes from the ranks' partitions when it is needed.
- Pages of a memory-mapped file count in the process's resident set once touched, so reading the
  whole model through mmap ends with the whole fp32 model resident. After a tensor is copied out,
  ``release()`` drops its pages with ``madvise(MADV_DONTNEED)`` (the mapping is private and never
  written, so a later read simply faults the bytes back in from the page cache).
- DeepSpeed loads model-state files whole; under ZeRO-2 the single model file holds every weight in
  the training dtype, so those loads are memory-mapped too.
- DeepSpeed's loads are forced weights-only (``natscale.checkpoint.safety``): nothing in the files
  can run code.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import mmap
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from natscale.checkpoint.safety import UnsafeCheckpointError, weights_only_loads
from natscale.checkpoint.zero_files import ZeroCheckpoint
from natscale.convert.errors import ConvertError


@dataclass
class LazyTensor:
    """One full tensor of the checkpoint; ``load()`` materialises it, ``release()`` frees its pages.

    ``chunks`` are 1-D slices (memory-mapped) whose concatenation, cut to ``shape.numel()``, is the
    tensor (ZeRO-1/2); ``gathered`` is DeepSpeed's GatheredTensor (ZeRO-3); ``eager`` a tensor that
    is already in memory (buffers, frozen parameters).
    """

    shape: torch.Size
    dtype: torch.dtype
    chunks: list[torch.Tensor] = field(default_factory=list)
    gathered: object | None = None
    eager: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        return self.shape.numel()

    def load(self) -> torch.Tensor:
        """The full tensor, contiguous, in the checkpoint's dtype (fp32 for parameters)."""
        if self.eager is not None:
            return self.eager.contiguous()
        if self.gathered is not None:
            return self.gathered.contiguous()
        if len(self.chunks) == 1:  # a view of the mapped file: copy it out
            return self.chunks[0][: self.numel].view(self.shape).clone()
        return torch.cat(self.chunks)[: self.numel].view(self.shape)

    def release(self, mapped: MappedRanges) -> None:
        """Drop the resident pages this tensor's bytes came from (no-op for in-memory tensors)."""
        for chunk in self._source_slices():
            mapped.drop(chunk.data_ptr(), chunk.numel() * chunk.element_size())

    def _source_slices(self) -> Iterator[torch.Tensor]:
        yield from self.chunks
        g = self.gathered
        if g is None:
            return
        # Same walk as GatheredTensor.contiguous(): rank r holds [offset, offset + partitioned_numel)
        # of the concatenation of its flat groups.
        start, end = g.offset, g.offset + g.partitioned_numel
        bounds = g.flat_groups_offset
        for rank_groups in g.flat_groups:
            for gid, flat in enumerate(rank_groups):
                lo, hi = max(start, int(bounds[gid])), min(end, int(bounds[gid + 1]))
                if lo < hi:
                    yield flat[lo - int(bounds[gid]) : hi - int(bounds[gid])]


class MappedRanges:
    """Address ranges of this process's private file mappings of the checkpoint files.

    ``drop()`` only ever touches memory inside these mappings: MADV_DONTNEED on anonymous memory
    would zero it, so a tensor that is not (or no longer) file-backed is left alone.
    """

    def __init__(self, files: list[Path]) -> None:
        self._ranges: list[tuple[int, int]] = []
        self._libc = None
        if not sys.platform.startswith("linux"):
            return
        names = {str(p.resolve()) for p in files}
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip() in names:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    self._ranges.append((lo, hi))
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def drop(self, addr: int, nbytes: int) -> None:
        if self._libc is None or nbytes <= 0:
            return
        page = mmap.PAGESIZE
        lo = addr // page * page
        hi = -(-(addr + nbytes) // page) * page
        for m_lo, m_hi in self._ranges:
            if m_lo <= lo and hi <= m_hi:
                self._libc.madvise(lo, hi - lo, 4)  # 4 = MADV_DONTNEED
                return


@contextlib.contextmanager
def _quiet_mmap_loads() -> Iterator[None]:
    """Silence DeepSpeed's prints and progress bars; memory-map its ``torch.load`` calls."""
    original = torch.load

    def load_mmap(*args, **kwargs):
        kwargs.setdefault("mmap", True)
        return original(*args, **kwargs)

    torch.load = load_mmap
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        torch.load = original


def read_lazy_state_dict(ckpt: ZeroCheckpoint) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """Every tensor of the checkpoint, lazily, in the model's parameter order.

    Returns (name -> LazyTensor, alias -> name) where aliases are DeepSpeed's ``shared_params``
    (tied weights stored once). Parameters are fp32 master weights, [*param shape], float32;
    buffers keep their saved dtype (floating buffers promoted to fp32 by DeepSpeed).
    """
    from deepspeed.utils import zero_to_fp32 as z2f

    try:
        with weights_only_loads(), _quiet_mmap_loads():
            model_states = z2f.parse_model_states([str(p) for p in ckpt.model_files])
            stage, world, flat_groups, paddings = z2f.parse_optim_states(
                [str(p) for p in ckpt.optim_files], str(ckpt.tag_dir)
            )
            if stage <= 2:
                meta = [[t.to("meta") for t in rank] for rank in flat_groups]
                sd = z2f._get_fp32_state_dict_from_zero2_checkpoint(
                    world, meta, model_states, False, paddings
                )
            else:
                sd = z2f._get_fp32_state_dict_from_zero3_checkpoint(
                    world, flat_groups, model_states, False
                )
    except (ConvertError, UnsafeCheckpointError):
        raise
    except (ValueError, KeyError, IndexError, RuntimeError, NotImplementedError) as exc:
        raise ConvertError(
            f"DeepSpeed could not rebuild the tensors of {ckpt.tag_dir}: {exc}. The files do not "
            "fit together (mixed runs or an unsupported layout)."
        ) from exc
    aliases = {alias: src for alias, src in model_states[0].shared_params if src in sd}
    tensors: dict[str, LazyTensor] = {}
    groups = [list(shapes) for shapes in model_states[0].param_shapes]
    group_of = {name: g for g, names in enumerate(groups) for name in names}
    for name, value in sd.items():
        if name in aliases:
            continue
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            chunks = _zero2_chunks(flat_groups, group_of[name], value)
            tensors[name] = LazyTensor(value.shape, torch.float32, chunks=chunks)
        elif isinstance(value, torch.Tensor):
            tensors[name] = LazyTensor(value.shape, value.dtype, eager=value)
        else:  # deepspeed GatheredTensor
            tensors[name] = LazyTensor(torch.Size(value.shape), value.dtype, gathered=value)
    return tensors, aliases


def _zero2_chunks(
    flat_groups: list[list[torch.Tensor]], group: int, view: torch.Tensor
) -> list[torch.Tensor]:
    """Slices of the ranks' partitions of ``group`` covering a meta view of their concatenation."""
    start, end = view.storage_offset(), view.storage_offset() + view.numel()
    chunks, base = [], 0
    for rank in flat_groups:
        part = rank[group]
        lo, hi = max(start, base), min(end, base + part.numel())
        if lo < hi:
            chunks.append(part[lo - base : hi - base])
        base += part.numel()
    if sum(c.numel() for c in chunks) != view.numel():
        raise ConvertError(
            f"ZeRO-2 partitions are shorter than the parameter layout ({view.shape})"
        )
    return chunks
