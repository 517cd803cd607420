"""DeepSpeed ZeRO checkpoint -> Hugging Face model directory (sharded safetensors + config + tokenizer).

Peak memory is about one tensor (in fp32 and in the output dtype), not the model: tensors are
rebuilt one at a time from the memory-mapped rank files (``zero_tensors``) and streamed into the
output shards (``safetensors_stream``). Every input check runs before the output is created, and
the output directory appears only when complete (``atomic``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from natscale.atomic import HF_EXPORT, atomic_output_dir, check_destination, within
from natscale.checkpoint.hf_assets import find_assets, load_config, write_assets
from natscale.checkpoint.safetensors_stream import (
    ShardWriter,
    TensorSpec,
    check_file,
    plan_shards,
    write_index,
)
from natscale.checkpoint.zero_files import inspect_checkpoint
from natscale.checkpoint.zero_tensors import LazyTensor, MappedRanges, read_lazy_state_dict
from natscale.convert.errors import ConvertError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@dataclass
class ConvertResult:
    out_dir: Path
    ckpt_root: Path  # the folder holding the tag folders (CKPT_DIR, or the parent of a tag folder)
    tag: str
    stage: int
    world_size: int
    dtype: str
    num_tensors: int
    num_params: int
    num_bytes: int
    shards: list[str]
    files: list[str]
    tokenizer_dir: Path | None
    config_dir: Path
    seconds: float
    notes: list[str] = field(default_factory=list)


def resolve_dtype(name: str, train_dtype: str) -> torch.dtype:
    """``auto`` is the run's training precision (bf16/fp16/fp32 from its DeepSpeed config)."""
    key = train_dtype if name == "auto" else name.lower()
    if key not in DTYPES:
        raise ConvertError(f"--dtype {name!r}: choose auto, bf16, fp16 or fp32")
    return DTYPES[key]


def _model_layout(config) -> tuple[dict[str, torch.Size], dict[str, str]]:
    """(state-dict key -> shape, tied alias -> kept key) of the config's causal LM, on meta."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise ConvertError(
            f"transformers cannot build a causal LM from this config: {exc}"
        ) from exc
    first_name: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            tied[name] = first_name[id(param)]  # save_pretrained keeps the first name only
        else:
            first_name[id(param)] = name
    shapes = {k: v.shape for k, v in model.state_dict().items() if k not in tied}
    return shapes, tied


def strip_wrapper_prefix(names: list[str], expected: set[str]) -> str:
    """A wrapper prefix (e.g. ``module.``) that maps checkpoint names onto HF names, or ''."""
    if not names or set(names) & expected:
        return ""
    for key in expected:
        if names[0].endswith("." + key):
            prefix = names[0][: -len(key)]
            if all(n.startswith(prefix) for n in names):
                return prefix
    return ""


def match_to_model(
    tensors: dict[str, LazyTensor], config, config_path: Path
) -> tuple[dict[str, str], list[str]]:
    """Map HF key -> checkpoint name, checking names and shapes against the config's model."""
    shapes, tied = _model_layout(config)
    names = list(tensors)
    prefix = strip_wrapper_prefix(names, set(shapes))
    notes = [f"stripped wrapper prefix {prefix!r} from parameter names"] if prefix else []
    mapping = {n[len(prefix) :]: n for n in names}
    retrained_tied = sorted(set(mapping) & set(tied))
    if retrained_tied:
        pairs = ", ".join(f"{k} -> {tied[k]}" for k in retrained_tied)
        raise ConvertError(
            f"{config_path} ties {pairs}, but the checkpoint holds separate tensors for them: "
            "the run trained them untied. Use a config with tie_word_embeddings=false."
        )
    missing = sorted(set(shapes) - set(mapping))
    unexpected = sorted(set(mapping) - set(shapes))
    if missing or unexpected:
        raise ConvertError(
            f"the checkpoint's tensors do not match the model of {config_path} "
            f"({type(config).__name__}): {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Is this the config the run "
            "trained? Pass the right one with --config-dir."
        )
    wrong = [k for k, n in mapping.items() if tuple(tensors[n].shape) != tuple(shapes[k])]
    if wrong:
        k = wrong[0]
        raise ConvertError(
            f"shape mismatch between the checkpoint and {config_path}: {k} is "
            f"{tuple(tensors[mapping[k]].shape)} in the checkpoint, {tuple(shapes[k])} in the "
            f"model ({len(wrong)} tensors differ). Pass the run's config with --config-dir."
        )
    return mapping, notes


def _write_shards(tmp: Path, specs, mapping, tensors, split, mapped, progress: bool) -> None:
    from tqdm import tqdm

    by_name = {s.name: s for s in specs}
    total = sum(s.nbytes for s in specs)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="zero-to-hf", disable=not progress)
    for filename, names in split.filename_to_tensors.items():
        shard_specs = [by_name[n] for n in names]
        writer = ShardWriter(tmp / filename, shard_specs, {"format": "pt"})
        try:
            for spec in shard_specs:
                lazy = tensors[mapping[spec.name]]
                full = lazy.load()
                writer.write(spec.name, full.to(spec.dtype))
                del full
                lazy.release(mapped)
                bar.update(spec.nbytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        check_file(tmp / filename, shard_specs)
    bar.close()


def convert_zero_to_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    tag: str | None = None,
    dtype: str = "auto",
    max_shard_size: int | str = "5GB",
    config_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertResult:
    """Convert one tag of a ZeRO-1/2/3 checkpoint into a ``from_pretrained``-ready folder.

    Tensors are the fp32 master weights of the optimizer, rebuilt from every rank's partition and
    cast to ``dtype`` (``auto``: the training precision). Raises ConvertError on bad input, with
    nothing written.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    inputs = [Path(ckpt_dir)] + ([Path(config_dir)] if config_dir else [])
    check_destination(out_dir, overwrite, kind=HF_EXPORT, inputs=inputs, error=ConvertError)
    ckpt = inspect_checkpoint(ckpt_dir, tag)
    if within(out_dir.resolve(), ckpt.root.resolve()):
        raise ConvertError(
            f"{out_dir} is inside the checkpoint folder {ckpt.root}: training deletes old tags "
            "there (checkpoint.keep_last) and a --fresh run moves it aside, export and all; "
            f"choose an output outside it, e.g. {ckpt.root.parent / 'hf'}"
        )
    assets = find_assets(ckpt.root, ckpt.tag_dir, Path(config_dir) if config_dir else None)
    config = load_config(assets)
    out_dtype = resolve_dtype(dtype, ckpt.train_dtype)
    tensors, _aliases = read_lazy_state_dict(ckpt)
    mapping, notes = match_to_model(tensors, config, assets.config_dir / "config.json")
    specs = []
    for hf_name, name in mapping.items():
        lazy = tensors[name]
        t_dtype = out_dtype if lazy.dtype.is_floating_point else lazy.dtype
        specs.append(TensorSpec(hf_name, tuple(lazy.shape), t_dtype))
    split = plan_shards(specs, max_shard_size)
    mapped = MappedRanges(ckpt.model_files + ckpt.optim_files)
    if assets.tokenizer_dir is None:
        places = ", ".join(str(p) for p in assets.searched)
        notes.append(f"no tokenizer found (looked in {places} and their tokenizer/ folders)")
    inputs += [p for p in (assets.config_dir, assets.tokenizer_dir) if p is not None]
    with atomic_output_dir(
        out_dir, kind=HF_EXPORT, overwrite=overwrite, inputs=inputs, error=ConvertError
    ) as tmp:
        _write_shards(tmp, specs, mapping, tensors, split, mapped, progress)
        if split.is_sharded:
            write_index(tmp, split)
        files = write_assets(assets, config, tmp, out_dtype)
    return ConvertResult(
        out_dir=out_dir,
        ckpt_root=ckpt.root,
        tag=ckpt.tag,
        stage=ckpt.stage,
        world_size=ckpt.world_size,
        dtype=str(out_dtype).removeprefix("torch."),
        num_tensors=len(specs),
        num_params=sum(torch.Size(s.shape).numel() for s in specs),
        num_bytes=sum(s.nbytes for s in specs),
        shards=list(split.filename_to_tensors),
        files=files,
        tokenizer_dir=assets.tokenizer_dir,
        config_dir=assets.config_dir,
        seconds=time.perf_counter() - start,
        notes=notes,
    )
