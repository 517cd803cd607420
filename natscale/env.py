"""What this machine offers natscale: versions, devices, DeepSpeed's backend, and natscale's ops.

Used by ``natscale env`` and by benchmark records. Every probe is guarded: a missing or broken
package is reported, never raised.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

PACKAGES = ("torch", "deepspeed", "transformers", "accelerate", "datasets", "flash-attn", "mpi4py")


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:  # pragma: no cover - torch is a hard dependency
        return {"error": f"import torch failed: {exc}"}
    cuda = torch.cuda.is_available()
    return {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "num_threads": torch.get_num_threads(),
    }


def _deepspeed_info() -> dict[str, Any]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _cuda_available() else "cuda")
    try:
        from deepspeed.accelerator import get_accelerator
    except Exception as exc:
        return {"error": f"import deepspeed failed: {type(exc).__name__}: {exc}"}
    acc = get_accelerator()
    return {
        "accelerator": acc._name,
        "communication_backend": acc.communication_backend_name(),
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR"),
    }


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _ops_info() -> list[dict[str, Any]]:
    try:
        ops = importlib.import_module("natscale.ops")
    except Exception as exc:
        return [{"name": "natscale.ops", "error": f"{type(exc).__name__}: {exc}"}]
    return ops.report()


def _tools_info() -> dict[str, str | None]:
    tools = {}
    for tool in ("nvcc", "ninja", "mpirun", "numactl", "pdsh"):
        path = shutil.which(tool)
        tools[tool] = path
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run(
                [nvcc, "--version"], capture_output=True, text=True, timeout=20
            ).stdout
            tools["nvcc_version"] = out.strip().splitlines()[-1] if out.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            tools["nvcc_version"] = None
    return tools


def collect() -> dict[str, Any]:
    """All of the environment report, as plain JSON-able data."""
    return {
        "natscale": package_version("natscale"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "torch": _torch_info(),
        "deepspeed": _deepspeed_info(),
        "tools": _tools_info(),
        "ops": _ops_info(),
    }


def format_text(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`collect`'s result."""
    t, ds = info["torch"], info["deepspeed"]
    lines = [
        f"natscale        {info['natscale']}",
        f"python          {info['python']}  ({info['platform']}, {info['cpu_count']} CPUs)",
    ]
    for name, ver in info["packages"].items():
        lines.append(f"{name:<15} {ver or 'not installed'}")
    if "error" in t:
        lines.append(f"torch           {t['error']}")
    else:
        gpus = ", ".join(t["gpus"]) or "none"
        lines.append(
            f"cuda            available={t['cuda_available']} build={t['cuda_build']} gpus={gpus}"
        )
    if "error" in ds:
        lines.append(f"deepspeed       {ds['error']}")
    else:
        lines.append(
            f"accelerator     {ds['accelerator']} (backend {ds['communication_backend']}, "
            f"DS_ACCELERATOR={ds['DS_ACCELERATOR']})"
        )
    tools = info["tools"]
    lines.append(
        "tools           "
        + ", ".join(
            f"{k}={'yes' if v else 'no'}" for k, v in tools.items() if not k.endswith("_version")
        )
    )
    for op in info["ops"]:
        if "error" in op:
            lines.append(f"op {op['name']}: unavailable ({op['error']})")
            continue
        lines.append(f"op {op['name']}: active={op['active']} ({op.get('why', '')})")
        for impl in op["implementations"]:
            state = (
                "built"
                if impl.get("built")
                else ("buildable" if impl.get("buildable") else "not buildable")
            )
            lines.append(f"   {impl['name']:<10} {state:<13} {impl.get('reason', '')}")
    return "\n".join(lines)
