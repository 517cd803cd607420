"""Reading checkpoints without running code from them.

A ``.pt`` file is a pickle, and ``torch.load(..., weights_only=False)`` runs whatever callable the
pickle names: a crafted ``optim_states.pt`` can run a shell command. natscale therefore reads every
checkpoint with torch's weights-only unpickler, which rebuilds only tensors, containers and plain
values (str, int, float, bool, None, dicts, lists, tuples, OrderedDict, torch dtypes/sizes) plus the
few classes allow-listed here. That holds for its own reads and for the DeepSpeed functions it calls
(``engine.load_checkpoint``, ``ds_to_universal``, ``zero_to_fp32``), whose own ``torch.load(...,
weights_only=False)`` calls are forced to ``weights_only=True`` by :func:`weights_only_loads`.

The allow-list is what DeepSpeed 0.19 ZeRO-1/2/3 checkpoints (fp32 and bf16, and their universal
conversions) were found to contain beyond plain values, all in the optimizer files:

- ``deepspeed.runtime.fp16.loss_scaler.LossScaler``: the (static) loss scaler's attributes;
- ``deepspeed.runtime.zero.config.ZeroStageEnum``: the ZeRO stage, an int enum;
- ``deepspeed.utils.tensor_fragment.fragment_address``: (numel, start) of a ZeRO-1/2 fragment.

Allowing a class lets the unpickler create an instance and set its attributes; it never lets the
file name a function to call. natscale's own client state (step, counters, RNG states) is stored
as plain values and tensors (see ``natscale.checkpoint.save.rng_state``). A file that needs any
other global is refused with :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
from collections.abc import Iterable, Iterator
from typing import Any

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_LEGACY_NUMPY_HINT = (
    " (Checkpoints written by natscale before it loaded weights-only kept the numpy RNG state as "
    "a numpy array; resume or convert those with the natscale version that wrote them.)"
)


class UnsafeCheckpointError(Exception):
    """A checkpoint file needs something other than tensors and plain values to be loaded."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(path, what)
        self.path, self.what = path, what

    def __str__(self) -> str:
        return (
            f"{self.path}: refused to load this checkpoint file: it needs {self.what}: not a "
            "tensor, a plain value or one of the DeepSpeed types natscale allows. natscale "
            "only loads checkpoints weights-only (torch.load with weights_only=True), because "
            "unpickling anything else can run code from the file. A checkpoint written by "
            "natscale/DeepSpeed never needs that: treat this file as untrusted and do not use it."
            + (_LEGACY_NUMPY_HINT if self.what.startswith("numpy.") else "")
        )


@functools.cache
def allowed_globals() -> tuple[type, ...]:
    """The classes beyond torch's defaults that a DeepSpeed checkpoint may contain (see above)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, ZeroStageEnum, fragment_address)


def _name(f: Any) -> str:
    if isinstance(f, str | os.PathLike):
        return os.fspath(f)
    return str(getattr(f, "name", f))


def _unsafe_globals(f: Any) -> list[str]:
    """Full names of the globals a checkpoint file needs beyond the allowed ones (static scan)."""
    import torch

    with torch.serialization.safe_globals(list(allowed_globals())):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f))


def _refusal(f: Any, exc: pickle.UnpicklingError) -> UnsafeCheckpointError:
    text = str(exc)
    names: list[str] = []
    if isinstance(f, str | os.PathLike):  # torch's message drops the module of builtins
        with contextlib.suppress(Exception):
            names = _unsafe_globals(f)
    names = names or sorted(set(_GLOBAL_RE.findall(text)))
    if names:
        what = ", ".join(names)
    else:  # another construct the weights-only unpickler rejects: keep torch's own words
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        what = lines[0] if lines else text.splitlines()[0]
    return UnsafeCheckpointError(_name(f), what)


def _safe_load(load: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    kwargs["weights_only"] = True  # whatever the caller asked for
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            return load(f, *args, **kwargs)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise
        raise _refusal(f, exc) from None


def load_weights_only(f: Any, **kwargs: Any) -> Any:
    """``torch.load(f, **kwargs)`` with ``weights_only=True`` and the DeepSpeed allow-list.

    Raises :class:`UnsafeCheckpointError` naming the file and the type it needed; errors of a
    truncated or corrupt file pass through unchanged.
    """
    import torch

    return _safe_load(torch.load, f, **kwargs)


def _install() -> Any:
    """Replace ``torch.load`` by a weights-only wrapper; return the function it replaced."""
    import torch

    original = torch.load

    @functools.wraps(original)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        return _safe_load(original, f, *args, **kwargs)

    load.natscale_weights_only = True  # type: ignore[attr-defined]
    torch.load = load
    return original


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """For its duration, every ``torch.load`` in this process is weights-only (see module doc).

    DeepSpeed's readers call ``torch.load(..., weights_only=False)`` through the ``torch`` module,
    so replacing the attribute reaches them all. Processes forked inside the block inherit it;
    process pools started in another way get :func:`install_in_worker` as their initializer.
    """
    import torch

    original = _install()
    try:
        yield
    finally:
        torch.load = original


def install_in_worker() -> None:
    """Pool initializer: make every ``torch.load`` of this worker process weights-only."""
    import torch

    if not getattr(torch.load, "natscale_weights_only", False):  # e.g. a spawned worker
        _install()


def check_files(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse (:class:`UnsafeCheckpointError`) the first file that needs a global not allowed.

    Reads only each file's pickle opcodes (nothing is unpickled or executed, no tensor data is
    read), so every rank can check a whole tag folder before a collective load starts. Files that
    are not torch zip checkpoints (truncated, legacy format) are left to the load, which reports
    them.
    """
    for path in paths:
        try:
            unsafe = _unsafe_globals(path)
        except (ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError):
            continue
        if unsafe:
            raise UnsafeCheckpointError(_name(path), ", ".join(unsafe))
