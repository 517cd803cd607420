"""Conversions behind ``natscale convert``.

- checkpoints: ``zero-to-hf`` and ``zero-to-universal`` run ``natscale.checkpoint.zero_to_hf`` and
  ``natscale.checkpoint.universal`` (the checkpoint package owns the checkpoint layout).
- ``trajectories.convert_trajectories``: trajectory files between formats (the loaders and
  writers of ``natscale.data.formats``).

Bad input raises ``errors.ConvertError`` before anything is written. Submodules are imported on
use, so importing this package stays cheap.
"""
