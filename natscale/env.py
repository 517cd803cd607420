"""What this machine offers natscale: versions, devices, DeepSpeed's backend, and natscale's ops.

:func:`machine` is the one description of where something ran (host, CPU and GPU models, memory,
load, versions, natscale's commit), recorded by ``natscale bench`` and the scripts under
``benchmarks/``; :func:`collect` adds DeepSpeed's backend, tools and ops for ``natscale env``.
Every probe is guarded: a missing or broken package is reported, never raised.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "deepspeed", "transformers", "accelerate", "datasets", "flash-attn", "mpi4py")


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


# what benchmark records list besides what the caller names
MACHINE_PACKAGES = ("torch", "deepspeed", "transformers", "natscale")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total memory of the machine in GiB (``/proc/meminfo``), or None where it is not known."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git(*args: str) -> str:
    """``git ARGS`` in the checkout natscale runs from ("" when installed from a wheel)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(packages: Iterable[str] = ()) -> dict[str, Any]:
    """Where a measurement ran: time, host, CPU and GPU, memory, load (a shared machine skews
    timings), the versions of :data:`MACHINE_PACKAGES` and ``packages``, and natscale's commit."""
    torch_info = _torch_info()
    gpus = torch_info.get("gpus") or []
    cpu = cpu_model()
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = None
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cores_used": cores,
        "mem_gib": memory_gib(),
        "device": gpus[0] if gpus else f"cpu: {cpu}",
        "device_count": len(gpus) if gpus else os.cpu_count(),
        "cuda": torch_info.get("cuda_build"),
        "nccl": torch_info.get("nccl"),
        "torch_threads": torch_info.get("num_threads"),
        "load_average_1_5_15": list(os.getloadavg()),
        "versions": {p: package_version(p) for p in dict.fromkeys([*MACHINE_PACKAGES, *packages])},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


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
        "nccl": _nccl_version(torch) if cuda else None,
        "num_threads": torch.get_num_threads(),
    }


def _nccl_version(torch: Any) -> str | None:
    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # a build without NCCL
        return None


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
        "cpu": cpu_model(),
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
        f"python          {info['python']}  ({info['platform']})",
        f"cpu             {info['cpu']} ({info['cpu_count']} CPUs)",
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
