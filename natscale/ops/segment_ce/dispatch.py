"""Which implementation of the segment loss runs for given tensors.

``NATSCALE_SEGMENT_CE_IMPL`` (or the ``impl=`` argument) picks one of:
  auto       CUDA build on CUDA tensors, CPU build on CPU tensors when built or JIT-buildable,
             else the PyTorch reference: never silently. The choice and its reason are kept
             (:func:`last_choice`, written to a run's summary.json and bench records), and on
             CUDA a fallback to the [T, V] reference is a RuntimeWarning naming the reason;
  reference  the pure-PyTorch spec (materialises the [T, V] logits);
  cpu / cuda that build; an error when the tensors are elsewhere or the build fails.
"""

from __future__ import annotations

import os
import warnings

import torch

from natscale.ops.builder import SEGMENT_CE_CPU, SEGMENT_CE_CUDA, OpBuilder

ENV_VAR = "NATSCALE_SEGMENT_CE_IMPL"
CHOICES = ("auto", "reference", "cpu", "cuda")
# float16 is refused by the native builds (gradients formed before the loss scale would underflow)
NATIVE_DTYPES = (torch.float32, torch.bfloat16)

_CHOICES: dict[str, dict[str, str]] = {}  # device type -> the last choice made for it


def requested_impl(impl: str | None = None) -> str:
    """The requested implementation: ``impl`` if given, else the environment, else ``auto``."""
    choice = (impl or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if choice not in CHOICES:
        source = "impl=" if impl else f"{ENV_VAR}="
        raise ValueError(f"{source}{choice!r} is not one of {', '.join(CHOICES)}")
    return choice


def _builder_for(device_type: str) -> OpBuilder | None:
    return {"cpu": SEGMENT_CE_CPU, "cuda": SEGMENT_CE_CUDA}.get(device_type)


def resolve_impl(device: torch.device, dtype: torch.dtype, impl: str | None = None) -> str:
    """The implementation that runs for tensors on ``device`` of ``dtype`` (no build started)."""
    return resolve_impl_why(device, dtype, impl)[0]


def resolve_impl_why(
    device: torch.device, dtype: torch.dtype, impl: str | None = None
) -> tuple[str, str]:
    """(implementation, why) for tensors on ``device`` of ``dtype``; no build is started."""
    choice = requested_impl(impl)
    source = "impl=" if impl else f"{ENV_VAR}="
    if choice == "reference":
        return choice, f"requested ({source}reference)"
    if choice in ("cpu", "cuda"):
        if device.type != choice:
            raise ValueError(
                f"segment_cross_entropy: the {choice} implementation was requested "
                f"({ENV_VAR} / impl=) but the tensors are on {device}"
            )
        return choice, f"requested ({source}{choice})"
    builder = _builder_for(device.type)
    if builder is None:
        return "reference", f"auto: no native build for {device.type} tensors"
    if dtype not in NATIVE_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in NATIVE_DTYPES)
        return "reference", f"auto: {dtype} inputs (the native builds take {names})"
    if builder._module is not None:  # loaded: no probing (this runs on every call)
        return device.type, f"auto: the {builder.label} build is loaded"
    available, reason = builder.is_available()
    if not available:
        return "reference", f"auto: the {builder.label} build is not available ({reason})"
    return device.type, f"auto: the {builder.label} build ({reason})"


def _record(device_type: str, dtype: torch.dtype, impl: str, why: str) -> None:
    _CHOICES[device_type] = {"impl": impl, "why": why, "dtype": str(dtype).replace("torch.", "")}
    if impl == "reference" and device_type == "cuda" and why.startswith("auto"):
        warnings.warn(
            f"natscale: the segment loss on CUDA falls back to the PyTorch reference, which "
            f"materialises the [T, V] logits (GBs at a real vocabulary, and slow): {why}. "
            f"Fix the cause, or set {ENV_VAR}=reference to choose it knowingly",
            RuntimeWarning,
            stacklevel=4,
        )


def last_choice() -> dict[str, dict[str, str]]:
    """The implementation each device type last ran, and why: ``{"cuda": {"impl", "why",
    "dtype"}}`` (empty before the first call). Written to a run's summary.json."""
    return {k: dict(v) for k, v in _CHOICES.items()}


def load_or_fallback(name: str, *, forced: bool) -> str | None:
    """Load the native build ``name``; None on success, else why it failed. Auto mode warns."""
    builder = _builder_for(name)
    assert builder is not None, name
    try:
        builder.load()
        return None
    except RuntimeError as exc:
        if forced:
            raise
        if name != "cuda":  # on CUDA, _record() warns louder
            warnings.warn(
                f"natscale: {exc}; using the PyTorch reference segment loss, which materialises "
                "the [T, V] logits (set NATSCALE_SEGMENT_CE_IMPL=reference to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
        return str(exc)


@torch.compiler.assume_constant_result
def choose_impl(device_type: str, dtype: torch.dtype, impl: str | None = None) -> str:
    """The implementation to run, with the native build loaded (or ``reference`` after a failed
    build in auto mode). Evaluated once at trace time under ``torch.compile``."""
    name, why = resolve_impl_why(torch.device(device_type), dtype, impl)
    if name != "reference":
        error = load_or_fallback(name, forced=requested_impl(impl) != "auto")
        if error is None:
            module = _builder_for(name)._module  # type: ignore[union-attr]
            mode = why.split(" ")[0]  # "auto:" or "requested"
            why = f"{mode.rstrip(':')}: {name} build loaded from {getattr(module, '__file__', '?')}"
        else:
            name, why = "reference", f"auto: the {name} build failed to load ({error})"
    _record(device_type, dtype, name, why)
    return name


def active_impl() -> str:
    """What ``auto`` (or the environment) selects on this machine's default device."""
    return active_impl_why()[0]


def active_impl_why() -> tuple[str, str]:
    """(implementation, why) that ``auto`` (or the environment) selects on the default device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return resolve_impl_why(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    except ValueError as exc:
        return f"invalid ({exc})", str(exc)
