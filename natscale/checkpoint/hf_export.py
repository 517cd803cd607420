"""Files a run directory holds besides checkpoints: the model's config/tokenizer and the HF export.

``RUN_DIR/model_config/`` (written at start) is a Hugging Face directory without weights:
config.json, generation_config.json when the model has one, and the tokenizer. Together with a
ZeRO checkpoint it is all a converter needs. ``RUN_DIR/hf/`` (written at the end) adds the
gathered 16-bit weights as safetensors, loadable with ``AutoModelForCausalLM.from_pretrained``.

The other writer of an HF folder, ``zero_to_hf`` (``natscale convert zero-to-hf``), works from
the files of a checkpoint on disk, one tensor at a time, without a model or an engine; both mark
their folder as an HF export (``natscale.atomic.HF_EXPORT``), so either may replace the other's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from natscale.atomic import HF_EXPORT, RUN_MODEL_CONFIG, replace_dir, write_marker
from natscale.filemode import apply_umask_tree
from natscale.model.load import config_path


def original_use_cache(model_section: Any) -> bool:
    """``use_cache`` as the source config had it (training forces it off; inference wants it back)."""
    data = json.loads(config_path(model_section).read_text(encoding="utf-8"))
    return bool(data.get("use_cache", True))


def save_tokenizer(tokenizer_dir: Path | None, out_dir: Path) -> bool:
    if tokenizer_dir is None:
        return False
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out_dir))
    return True


def write_model_config(
    hf_model: Any, out_dir: Path, *, use_cache: bool, tokenizer_dir: Path | None
) -> None:
    """config.json (+ generation_config.json) and the tokenizer, no weights. Rank 0 only."""
    with _temp_beside(out_dir) as tmp:
        with _use_cache(hf_model.config, use_cache):
            hf_model.config.save_pretrained(str(tmp))
        if getattr(hf_model, "generation_config", None) is not None and hf_model.can_generate():
            hf_model.generation_config.save_pretrained(str(tmp))
        save_tokenizer(tokenizer_dir, tmp)
        write_marker(tmp, RUN_MODEL_CONFIG)  # the next run may replace it (train preflight)
        _swap_in(tmp, out_dir)


def export_hf(
    engine: Any, hf_model: Any, out_dir: Path, *, use_cache: bool, tokenizer_dir: Path | None
) -> Path:
    """Gather the 16-bit weights (collective: every rank calls this) and write an HF directory."""
    import torch.distributed as dist

    if engine.zero_optimization_partition_weights():
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # full dict on rank 0 only
    else:
        state_dict = engine.module.state_dict()
    if dist.get_rank() == 0:
        with _temp_beside(out_dir) as tmp:
            with _use_cache(hf_model.config, use_cache):
                hf_model.save_pretrained(str(tmp), state_dict=state_dict)
            save_tokenizer(tokenizer_dir, tmp)
            write_marker(tmp, HF_EXPORT)  # `convert zero-to-hf ... --overwrite` may replace it
            _swap_in(tmp, out_dir)
    dist.barrier()
    return out_dir


@contextlib.contextmanager
def _use_cache(config: Any, use_cache: bool) -> Iterator[None]:
    """``config.use_cache`` set for the save inside (training runs with it off)."""
    saved, config.use_cache = config.use_cache, use_cache
    try:
        yield
    finally:
        config.use_cache = saved


@contextlib.contextmanager
def _temp_beside(out_dir: Path) -> Iterator[Path]:
    """An empty hidden folder ``.NAME.tmp`` beside ``out_dir`` to write in; removed if the body
    raises (Ctrl-C included). One left by a process that was killed is replaced."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` so that readers never see a half-written directory."""
    apply_umask_tree(tmp)  # safetensors writes its files 0600
    replace_dir(tmp, final)
