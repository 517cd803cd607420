"""Run directories and DeepSpeed checkpoints: their layout, saving, reading and exporting.

- ``layout``: ``RunDir`` and ``CheckpointDir``, every path of a run directory named once.
- ``save``: save / load a checkpoint (collective), the atomic ``latest``, pruning old tags.
- ``resume``: which checkpoint ``--resume`` starts from (checked on rank 0); ``--fresh``.
- ``universal``: DeepSpeed's universal checkpoint, to resume on another number of ranks.
- ``zero_files``: find and check a ZeRO checkpoint's files; ``zero_tensors``: rebuild its tensors.
- ``zero_to_hf``: ZeRO checkpoint -> Hugging Face folder (``safetensors_stream`` writes the shards,
  ``hf_assets`` finds config and tokenizer); ``hf_export``: the trainer's own export at the end
  of a run and its ``model_config/``; ``verify``: an export's logits against its checkpoint.
- ``safety``: every checkpoint file is loaded weights-only.

Submodules are imported on use, so importing this package stays cheap.
"""
