"""Repository-wide pytest setup: environment for CPU runs and the `gpu` / `slow` markers.

- `gpu` tests run only where torch sees a CUDA device.
- `slow` tests run only with NATSCALE_SLOW=1 (CI on 2 cores keeps the suite under 10 minutes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = _cuda_available()
    run_slow = os.environ.get("NATSCALE_SLOW") == "1"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    skip_slow = pytest.mark.skip(reason="slow test: set NATSCALE_SLOW=1 to run it")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
    if not has_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
