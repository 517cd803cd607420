"""Checkpoint and data conversion (``natscale convert``).

- ``zero_to_hf.convert_zero_to_hf``: DeepSpeed ZeRO-1/2/3 checkpoint -> HF safetensors folder,
  tensor by tensor (``zero_checkpoint`` checks the files, ``zero_tensors`` rebuilds tensors
  through DeepSpeed's ``zero_to_fp32``, ``safetensors_stream`` writes the shards,
  ``hf_assets`` finds config and tokenizer, ``atomic`` makes the folder appear whole).
- ``verify.verify_export``: logits of the exported model against the checkpoint's weights.
- ``trajectories.convert_trajectories``: trajectory files between formats (the loaders and
  writers of ``natscale.data.formats``).

Bad input raises ``errors.ConvertError`` before anything is written. Submodules are imported on
use, so importing this package stays cheap.
"""
