"""``natscale ARGS`` with a full disk under one checkpoint tag: for tests of a failed save.

With ``NATSCALE_TEST_ENOSPC_TAG=global_step4`` in the environment, every ``torch.save`` into a
folder named ``global_step4`` raises ``OSError(ENOSPC)``, as a write to a full disk does. Nothing
else changes: DeepSpeed and natscale run as they do under the ``natscale`` command.
"""

from __future__ import annotations

import errno
import os
import sys

import torch

from natscale.cli.main import main

_REAL_SAVE = torch.save


def _save(obj, f, *args, **kwargs):
    tag = os.environ.get("NATSCALE_TEST_ENOSPC_TAG")
    if tag and isinstance(f, str | os.PathLike):
        path = os.fspath(f)
        if f"{os.sep}{tag}{os.sep}" in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return _REAL_SAVE(obj, f, *args, **kwargs)


torch.save = _save

if __name__ == "__main__":
    sys.exit(main())
