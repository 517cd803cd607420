"""Conversions behind ``natscale convert``.

- checkpoints: ``zero-to-hf`` and ``zero-to-universal`` run ``natscale.checkpoint.zero_to_hf`` and
  ``natscale.checkpoint.universal`` (the checkpoint package owns the checkpoint layout).
- ``data.convert_trajectories``: trajectory files between formats (``writers/``, one per format).

Bad input raises ``errors.ConvertError`` before anything is written. Submodules are imported on
use, so importing this package stays cheap.
"""
