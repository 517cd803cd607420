"""Which implementation of the segment loss runs for given tensors.

``NATSCALE_SEGMENT_CE_IMPL`` (or the ``impl=`` argument) picks one of:
  auto       CUDA build on CUDA tensors, CPU build on CPU tensors when built or JIT-buildable,
             else the PyTorch reference (with a warning when a native build failed);
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
NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    choice = requested_impl(impl)
    if choice == "reference":
        return choice
    if choice in ("cpu", "cuda"):
        if device.type != choice:
            raise ValueError(
                f"segment_cross_entropy: the {choice} implementation was requested "
                f"({ENV_VAR} / impl=) but the tensors are on {device}"
            )
        return choice
    builder = _builder_for(device.type)
    if builder is None or dtype not in NATIVE_DTYPES or not builder.usable():
        return "reference"
    return device.type


def load_or_fallback(name: str, *, forced: bool) -> bool:
    """Load the native build ``name``; True on success. Auto mode warns and falls back."""
    builder = _builder_for(name)
    assert builder is not None, name
    try:
        builder.load()
        return True
    except RuntimeError as exc:
        if forced:
            raise
        warnings.warn(
            f"natscale: {exc}; using the PyTorch reference segment loss, which materialises "
            "the [T, V] logits (set NATSCALE_SEGMENT_CE_IMPL=reference to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


@torch.compiler.assume_constant_result
def choose_impl(device_type: str, dtype: torch.dtype, impl: str | None = None) -> str:
    """The implementation to run, with the native build loaded (or ``reference`` after a failed
    build in auto mode). Evaluated once at trace time under ``torch.compile``."""
    name = resolve_impl(torch.device(device_type), dtype, impl)
    if name == "reference":
        return name
    return name if load_or_fallback(name, forced=requested_impl(impl) != "auto") else "reference"


def active_impl() -> str:
    """What ``auto`` (or the environment) selects on this machine's default device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return resolve_impl(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    except ValueError as exc:
        return f"invalid ({exc})"
