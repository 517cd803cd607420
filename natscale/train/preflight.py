"""Checks that run before any process group starts: a bad directory fails fast and clearly.

Every rank runs them (they are cheap), so no rank sits in a collective waiting for one that died.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natscale.atomic import (
    HF_CONFIG_FILES,
    HF_EXPORT,
    KIND_NAMES,
    MARKER,
    RUN_MODEL_CONFIG,
    enclosing_output,
    foreign_entries,
    read_marker,
    shown_names,
    within,
)
from natscale.checkpoint.layout import RunDir
from natscale.config.ds_config import (
    check_with_deepspeed,
    resolve_ds_config,
    resolve_ds_config_path,
)
from natscale.config.loader import ConfigError
from natscale.config.run import RunConfig
from natscale.data.prepared import (
    PreparedDataError,
    PreparedDir,
    first_bad_token,
    longest_row,
    most_segments,
)
from natscale.data.schema import LEGACY_DTYPES, ROW_FIELDS
from natscale.model.load import (
    ModelSourceError,
    choose_attn_implementation,
    damaged_weights,
    has_weights,
    load_hf_config,
    model_class,
    text_config,
)
from natscale.train.metrics import MetricsFileError, parse_metrics

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class PreflightError(ValueError):
    """A directory named by the run config is missing or does not fit the others."""


@dataclass(frozen=True)
class Preflight:
    vocab_size: int
    hidden_size: int
    num_rows: int
    tokenizer_dir: Path | None
    notes: list[str]


def check_run(
    run: RunConfig, *, resume: bool, fresh: bool = False, resume_from: str | None = None
) -> Preflight:
    """Every check of this module; ``resume_from`` implies ``resume``."""
    notes: list[str] = []
    try:
        config = load_hf_config(run.model)
    except ModelSourceError as exc:
        raise PreflightError(str(exc)) from exc
    if run.model.path is not None and not has_weights(run.model.path):
        raise PreflightError(
            f"model.path: {run.model.path} has no *.safetensors or pytorch_model*.bin weights; "
            "for random init use model.config instead"
        )
    check_model_class(run, config, notes)
    text = text_config(config)  # a multimodal model's language model
    num_rows = check_data(run.data.path, vocab_size=text.vocab_size)
    check_packing(run.data.path, config)
    tokenizer_dir = resolve_tokenizer(run, notes)
    if tokenizer_dir is not None:
        check_tokenizer(run, tokenizer_dir, text.vocab_size)
    check_ds_config(run, hidden_size=text.hidden_size)
    inputs = {
        "model.path": run.model.path,
        "model.config": run.model.config,
        "model.tokenizer" if run.model.tokenizer else "the tokenizer": tokenizer_dir,
        "data.path": run.data.path,
        "deepspeed.config": resolve_ds_config_path(run.deepspeed.config),
    }
    if (resume or resume_from is not None) and not fresh:
        check_same_model(run, config)
    check_output_dir(
        Path(run.output_dir),
        resume=resume or resume_from is not None,
        fresh=fresh,
        resume_from=resume_from,
        inputs={k: Path(v) for k, v in inputs.items() if v is not None},
        export_hf=run.checkpoint.export_hf,
    )
    if not fresh:  # --fresh moves them to previous-<time>/ first
        check_start_files(run)
    if run.model.path is not None and (damage := damaged_weights(run.model.path)) is not None:
        raise PreflightError(f"model.path: {damage}")
    return Preflight(text.vocab_size, text.hidden_size, num_rows, tokenizer_dir, notes)


def check_data(path: str, *, vocab_size: int) -> int:
    """The data directory is a complete prepared-data folder of rows in the schema, and every
    token id of every row is one the model knows (one vectorised pass over the id column)."""
    prepared = PreparedDir(path)
    d = prepared.root
    if not d.exists():
        raise PreflightError(
            f"data.path: {d} does not exist; prepare the data first: natscale prepare CONFIG "
            f"--out {d}"
        )
    if not prepared.state.is_file() and not prepared.stats.is_file():
        raise PreflightError(
            f"data.path: {d} is not a `natscale prepare` output directory (no datasets "
            "state.json, no stats.json); run `natscale prepare CONFIG` first"
        )
    try:
        ds = prepared.open()
    except PreparedDataError as exc:
        raise PreflightError(f"data.path: {exc}") from exc
    for field, dtype in ROW_FIELDS.items():
        feature = ds.features.get(field)
        if feature is None:
            raise PreflightError(f"data.path: {d} rows lack the field {field!r}; re-run prepare")
        got = getattr(getattr(feature, "feature", None), "dtype", None)
        if got not in (dtype, LEGACY_DTYPES.get(field)):
            raise PreflightError(
                f"data.path: {d} field {field!r} holds {feature}, expected a list of {dtype}"
            )
    if len(ds) == 0:
        raise PreflightError(f"data.path: {d} has no rows")
    row, bad = first_bad_token(ds, vocab_size)
    if row >= 0:
        raise PreflightError(
            f"data.path: {d} row {row} holds token id {bad}, outside the model's vocabulary "
            f"[0, {vocab_size}); the data was tokenized for another model (prepare it with the "
            "model's tokenizer, or train the model it was prepared for)"
        )
    return len(ds)


def check_packing(path: str, config: Any) -> None:
    """A family whose packed rows mix segments (natscale.model.families) trains only on rows of
    one example each (``pack.algorithm: none``); DeepSeek Sparse Attention on packed rows only
    when none is longer than its ``index_topk``."""
    from natscale.model.families import index_topk, packing_refusal, sparse_attention_refusal

    refusal = packing_refusal(str(getattr(config, "model_type", "")))
    if refusal is None and index_topk(config) is None:
        return
    rows = PreparedDir(path).open()
    if most_segments(rows) <= 1:  # unpacked: every causal model computes each row exactly
        return
    if refusal is None:
        refusal = sparse_attention_refusal(config, longest_row(rows))
    if refusal is not None:
        raise PreflightError(
            f"data.path: {path} holds packed rows, and {refusal}. Prepare the data with "
            "pack.algorithm: none (one example per row) to train it unpacked"
        )


def resolve_tokenizer(run: RunConfig, notes: list[str]) -> Path | None:
    """model.tokenizer, else DATA/tokenizer, else the model directory when it holds a tokenizer."""
    if run.model.tokenizer is not None:
        tok = Path(run.model.tokenizer)
        if not _is_tokenizer_dir(tok):
            raise PreflightError(f"model.tokenizer: {tok} holds no tokenizer ({TOKENIZER_FILES})")
        return tok
    data_tok = PreparedDir(run.data.path).tokenizer
    for cand in (data_tok, run.model.path):
        if cand is not None and _is_tokenizer_dir(Path(cand)):
            return Path(cand)
    notes.append(
        f"no tokenizer in {data_tok} or the model directory: "
        "the run directory and the HF export will have none"
    )
    return None


def _load_tokenizer(path: Path, field: str) -> Any:
    """natscale's tokenizer loader (the one prepare and eval use); its errors as PreflightError."""
    from natscale.data.render import load_tokenizer

    try:
        return load_tokenizer(path)
    except (OSError, ValueError, TypeError) as exc:  # e.g. a tokenizer.json that is not JSON
        raise PreflightError(f"{field}: {exc}") from exc


def check_tokenizer(run: RunConfig, tokenizer_dir: Path, vocab_size: int) -> None:
    field = "model.tokenizer" if run.model.tokenizer is not None else "the tokenizer"
    tok = _load_tokenizer(tokenizer_dir, field)
    if len(tok) > vocab_size:
        raise PreflightError(
            f"tokenizer {tokenizer_dir} has {len(tok)} tokens but the model's vocab_size is "
            f"{vocab_size}; use the tokenizer the data was prepared with and a matching model"
        )
    data_tok = PreparedDir(run.data.path).tokenizer
    others = [p for p in (data_tok, run.model.path) if p is not None and _is_tokenizer_dir(Path(p))]
    for other in others:
        if Path(other).resolve() == tokenizer_dir.resolve():
            continue
        where = "model.path" if other == run.model.path else "data.path's tokenizer"
        if _load_tokenizer(Path(other), where).get_vocab() != tok.get_vocab():
            raise PreflightError(
                f"tokenizers differ: {tokenizer_dir} and {other} map tokens to different ids; "
                "the data must be prepared with the model's tokenizer"
            )


def check_ds_config(run: RunConfig, *, hidden_size: int) -> None:
    import torch.distributed as dist

    # DeepSpeed's config class checks the batch sizes against the live world size, if any
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    ds = resolve_ds_config(run, world_size=world, hidden_size=hidden_size)
    check_with_deepspeed(ds, f"deepspeed.config {resolve_ds_config_path(run.deepspeed.config)}")


def check_output_dir(
    out: Path,
    *,
    resume: bool,
    fresh: bool = False,
    resume_from: str | None = None,
    inputs: dict[str, Path] | None = None,
    export_hf: bool = False,
) -> None:
    """``out`` can be written, and what it holds fits the flags (the checkpoint itself is checked
    later, on rank 0: natscale.checkpoint.resume).

    inputs: what the run reads (``{"model.path": PATH, ...}``): none may lie in what ``--fresh``
    moves aside, nor in ``out/hf`` when the run exports there (``export_hf``)."""
    inputs = inputs or {}
    if out.exists() and not out.is_dir():
        raise PreflightError(f"output_dir: {out} exists and is not a directory")
    _check_output_outside_inputs(out, inputs)
    if resume and fresh:
        raise PreflightError("--fresh starts over and --resume continues: pass one of them")
    check_writable(out)
    run_dir = RunDir(out)
    ckpts = run_dir.checkpoints
    ckpt = ckpts.root
    tags = ckpts.list_tags()
    latest = ckpts.read_latest_text()
    if not resume and not fresh and (tags or latest is not None):
        shown = ", ".join(tags[-4:]) if tags else f"a latest file naming {latest!r}"
        raise PreflightError(
            f"output_dir: {out} already holds checkpoints ({shown}); pass --resume to continue "
            "that run, --fresh to start over at step 1 (the previous run's files are moved to "
            f"{out}/previous-<time>/, not deleted), or choose another output_dir"
        )
    # a previous run without checkpoints (checkpoint.at_end: false, or killed before its first
    # save); an hf/ natscale did not write is not a run's (check_hf_destination says what it is)
    hf_ours = run_dir.hf.is_dir() and read_marker(run_dir.hf) == HF_EXPORT
    held = [name for name in ("metrics.jsonl", "summary.json") if (out / name).exists()]
    held += ["hf"] if hf_ours else []
    if not tags and latest is None and held and not fresh:
        finished = [name for name in held if name != "metrics.jsonl"]
        if not resume or finished:
            what = "a finished run" if finished else "a previous run"
            raise PreflightError(
                f"output_dir: {out} already holds {what} without checkpoints "
                f"({', '.join(held)}), so there is nothing to --resume from; pass --fresh to "
                "start over at step 1 (the previous run's files are moved to "
                f"{out}/previous-<time>/, not deleted), or choose another output_dir"
            )
    if fresh:
        _check_inputs_outside(
            out, inputs, RunDir.ENTRIES, "--fresh would move it to previous-<time>/"
        )
        if run_dir.hf.is_dir() and any(run_dir.hf.iterdir()) and not hf_ours:
            raise PreflightError(
                f"output_dir: {run_dir.hf} was not written by natscale (no {MARKER} marker of an "
                "HF export), and --fresh would move it to previous-<time>/ with the previous "
                "run's files; move it out of the run directory first"
            )
    elif export_hf:
        check_hf_destination(run_dir.hf, inputs)
    if resume_from is not None and not ckpts.tag_dir(resume_from).is_dir():
        raise PreflightError(
            f"--resume-from {resume_from}: {ckpts.tag_dir(resume_from)} does not exist (checkpoints in "
            f"{ckpt}: {', '.join(tags) or 'none'})"
        )
    metrics = run_dir.metrics
    if resume and metrics.is_file():
        try:
            parse_metrics(metrics)  # a cut-off last line is fine: the trainer removes it
        except (MetricsFileError, OSError) as exc:
            raise PreflightError(f"output_dir: {exc}") from exc


def _check_output_outside_inputs(out: Path, inputs: dict[str, Path]) -> None:
    """``out`` is neither an input folder of the run (the prepared data, the model, the
    tokenizer) nor inside one, nor inside a prepared dataset or an HF export: the run would write
    its checkpoints, ``config.yaml`` and ``hf/`` among files that are not its own (e.g.
    ``output_dir`` and ``data.path`` swapped)."""
    fix = (
        "the run writes its checkpoints, config.yaml and hf/ export there; choose an output_dir "
        "outside it"
    )
    resolved = out.resolve()
    for field, path in inputs.items():
        folder = path.resolve()
        if folder.is_dir() and within(resolved, folder):
            where = "is" if resolved == folder else "is inside"
            raise PreflightError(f"output_dir: {out} {where} {field} ({path}); {fix}")
    enclosing = enclosing_output(resolved, include_self=True)
    if enclosing is not None:
        folder, kind = enclosing
        where = "is" if folder == resolved else f"is inside {folder},"
        raise PreflightError(f"output_dir: {out} {where} {KIND_NAMES[kind]}; {fix}")


def _check_inputs_outside(
    out: Path, inputs: dict[str, Path], entries: tuple[str, ...], why: str
) -> None:
    """No input of the run lies in ``out/NAME`` for NAME in ``entries`` (an existing one)."""
    for name in entries:
        held = out / name
        if not held.exists():
            continue
        for field, path in inputs.items():
            if within(path.resolve(), held.resolve()):
                where = f"is {held}" if path.resolve() == held.resolve() else f"is inside {held}"
                raise PreflightError(
                    f"{field}: {path} {where}, and {why}; copy it outside {out} and "
                    f"set {field} to the copy, or choose another output_dir"
                )


def check_hf_destination(hf: Path, inputs: dict[str, Path]) -> None:
    """``hf`` (RUN_DIR/hf) may be replaced by the end-of-run export: absent or empty, or an HF
    export natscale wrote holding nothing else, and none of the run's inputs inside."""
    if not hf.exists():
        return
    fix = "move it out of the run directory, or set checkpoint.export_hf=false"
    if not hf.is_dir():
        raise PreflightError(f"output_dir: {hf} exists and is not a directory; {fix}")
    _check_inputs_outside(
        hf.parent, inputs, (hf.name,), "the export at the end of the run replaces that folder"
    )
    if not any(hf.iterdir()):
        return
    if read_marker(hf) != HF_EXPORT:
        raise PreflightError(
            f"output_dir: {hf} was not written by natscale (no {MARKER} marker of an HF export), "
            f"and the export at the end of the run would replace it; {fix}"
        )
    added = foreign_entries(hf)
    if added:
        raise PreflightError(
            f"output_dir: {hf} holds what natscale did not write there ({shown_names(added)}), and the "
            f"export at the end of the run would delete it; move that out of {hf}, or set "
            "checkpoint.export_hf=false"
        )


# the config fields that decide the shapes of a checkpoint's tensors
SHAPE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)


def check_model_class(run: RunConfig, config: Any, notes: list[str]) -> None:
    """The model's family and class: a note for a family natscale has not checked
    (natscale.model.families; the ones it refuses for packed rows: check_packing); a
    ``model.attn_implementation`` asked for by name that the class implements; ``model.loss:
    fused`` only for a model whose logits it computes exactly (no logit cap, no lm_head bias:
    natscale.model.logits); a positive ``model.router_aux_loss_coef`` only for an MoE model with
    a router loss. The model is built on the meta device (no memory, no weights read) to see its
    lm_head."""
    from natscale.model.families import unchecked_note
    from natscale.model.router import router_aux_refusal

    model_type = str(getattr(config, "model_type", ""))
    if (note := unchecked_note(model_type)) is not None:
        notes.append(note)
    cls = model_class(config)
    try:  # the device only matters for auto, which never fails
        choose_attn_implementation(run.model.attn_implementation, "cpu", model_cls=cls)
    except ModelSourceError as exc:
        raise PreflightError(str(exc)) from exc
    coef = run.model.router_aux_loss_coef
    if cls is not None and (refusal := router_aux_refusal(config, cls, coef)) is not None:
        raise PreflightError(refusal)
    if run.model.loss != "fused":
        return
    import torch
    from transformers import AutoModelForCausalLM

    from natscale.model.logits import fused_loss_blocker

    try:
        with torch.device("meta"):
            head = AutoModelForCausalLM.from_config(config).get_output_embeddings()
    except Exception:  # not buildable here (e.g. an attention backend): the real build says why
        head = None
    blocker = fused_loss_blocker(config, head)
    if blocker is not None:
        raise PreflightError(
            f"model.loss: fused: {blocker}; set model.loss: logits "
            "(the lm_head's logits, then the model's own transform and F.cross_entropy)"
        )


def check_same_model(run: RunConfig, config: Any) -> None:
    """When resuming, the model has the shapes of the one that wrote the checkpoints (recorded in
    ``RUN_DIR/model_config/config.json``); else loading the checkpoint would fail deep in DeepSpeed."""
    import json

    layout = RunDir(run.output_dir)
    saved = layout.model_config / "config.json"
    ckpts = layout.checkpoints
    if not saved.is_file() or not (ckpts.list_tags() or ckpts.latest_file.is_file()):
        return
    try:
        before = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # unreadable record: the load itself still checks the shapes
    source = (
        f"model.path {run.model.path}" if run.model.path else f"model.config {run.model.config}"
    )
    for key in SHAPE_FIELDS:
        if key not in before or not hasattr(config, key):
            continue
        now = getattr(config, key)
        if before[key] != now:
            raise PreflightError(
                f"--resume: the checkpoints in {ckpts.root} were written by a model with "
                f"{key}={before[key]!r} ({saved}), but {source} has {key}={now!r}; resume with "
                "the model the run was trained with, or start over with --fresh or another "
                "output_dir"
            )


def run_started(layout: RunDir) -> bool:
    """Whether a natscale run has started in ``layout`` (its first act is to write
    ``model_config/``, marked, then ``config.yaml`` and ``ds_config.json``)."""
    mc, ckpts = layout.model_config, layout.checkpoints
    if mc.is_dir() and read_marker(mc) == RUN_MODEL_CONFIG:
        return True
    if layout.metrics.exists() or layout.summary.exists():
        return True
    if ckpts.list_tags() or ckpts.latest_file.exists():
        return True
    # a run of a natscale from before the marker, stopped before its first step
    return (mc / "config.json").is_file() and layout.config.is_file() and layout.ds_config.is_file()


def check_start_files(run: RunConfig) -> None:
    """What a run rewrites when it starts, ``RUN_DIR/{model_config/, config.yaml,
    ds_config.json}``, holds only what a natscale run wrote there: a user's file of that name
    would be replaced (when ``config.yaml`` is the run config itself, :func:`check_config_location`
    says so first)."""
    out = Path(run.output_dir)
    layout = RunDir(out)
    started = run_started(layout)
    mc = layout.model_config
    fix = "move it out of the run directory, or choose another output_dir"
    if mc.exists() and not mc.is_dir():
        raise PreflightError(
            f"output_dir: {mc} is a file; the run writes the model's config and tokenizer in a "
            f"folder of that name when it starts; {fix}"
        )
    if mc.is_dir():
        names = sorted(p.name for p in mc.iterdir() if p.name != MARKER)
        if read_marker(mc) == RUN_MODEL_CONFIG:
            foreign = foreign_entries(mc)
        elif started:
            # from before the marker: a config and a tokenizer, no weights
            legacy = HF_CONFIG_FILES
            foreign = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in legacy)]
        else:
            foreign = names
        if foreign:
            raise PreflightError(
                f"output_dir: {mc} holds what natscale did not write there "
                f"({shown_names(foreign)}), and the run replaces that folder with the model's "
                f"config and tokenizer when it starts; {fix}"
            )
    if started:
        return
    if layout.ds_config.exists():
        raise PreflightError(
            f"output_dir: {layout.ds_config} exists but no run has started in {out}, and the run "
            "writes its resolved DeepSpeed config there when it starts; move the file out of the "
            "run directory (point deepspeed.config at the copy if the run reads it), or choose "
            "another output_dir"
        )
    if layout.config.exists() and not _holds_resolved_config(layout.config, run):
        raise PreflightError(
            f"output_dir: {layout.config} exists but no run has started in {out}, and the "
            f"run writes its resolved config there when it starts; {fix}"
        )


def _holds_resolved_config(path: Path, run: RunConfig) -> bool:
    """Whether ``path`` holds exactly what the run writes to ``RUN_DIR/config.yaml``."""
    import yaml

    resolved = yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False)
    try:
        return path.read_text(encoding="utf-8") == resolved
    except (OSError, UnicodeDecodeError):
        return False


def check_config_location(config: str | Path, run: RunConfig) -> None:
    """The run config file is not ``RUN_DIR/config.yaml``, which the run rewrites with the
    resolved config, unless a run has started there (it wrote that file: a run resumed from its
    saved config, with or without ``--set``) or it already holds exactly that."""
    layout = RunDir(run.output_dir)
    saved = layout.config
    if not saved.is_file() or Path(config).resolve() != saved.resolve():
        return
    if run_started(layout):
        return  # a run has started here and written it: the resolved config of that run
    if not _holds_resolved_config(saved, run):
        raise PreflightError(
            f"{config} is the run directory's config.yaml, which the run overwrites with the "
            "resolved config (comments and --set values included); keep the run config outside "
            f"the run directory {run.output_dir} (copy it elsewhere and pass the copy)"
        )


def check_writable(out: Path) -> None:
    """Create (and remove) a file in ``out``, or in its nearest existing parent, and in
    ``out/checkpoints`` when it exists: a read-only place fails here, not in rank 0's first save.
    """
    import tempfile

    ckpt = RunDir(out).checkpoints.root
    probes = [p for p in (out, ckpt) if p.is_dir()]
    if not probes:
        parent = out.parent
        while not parent.is_dir() and parent != parent.parent:
            parent = parent.parent
        probes = [parent]
    for folder in probes:
        try:
            with tempfile.TemporaryFile(dir=folder, prefix=".natscale-probe-"):
                pass
        except OSError as exc:
            where = "" if folder in (out, ckpt) else f" (to create {out} in it)"
            raise PreflightError(
                f"output_dir: cannot write in {folder}{where}: {exc.strerror or exc}; choose a "
                "writable output_dir"
            ) from exc


def _is_tokenizer_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES)


__all__ = ["ConfigError", "Preflight", "PreflightError", "check_run"]
