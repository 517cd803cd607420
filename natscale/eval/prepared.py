"""Prompt wording recorded by ``natscale prepare``, so evaluation cannot drift from training.

A prepared directory holds ``prepare_config.yaml`` (the resolved config: NAT strategy, the
instruction mode and acknowledgement, the sources with their task prompt file), ``stats.json``
(the chat template actually used and its end-of-turn text) and ``tokenizer/``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from natscale.eval.errors import EvalError


def _recorded(prepared_dir: str | os.PathLike):
    """(the PreparedDir, its PrepareConfig, its stats.json) of a dataset; EvalError when it is
    not one ``natscale prepare`` wrote."""
    from natscale.config.loader import ConfigError, load_config
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepared import PreparedDir

    prepared = PreparedDir(prepared_dir)
    root = prepared.root
    cfg_path, stats_path = prepared.prepare_config, prepared.stats
    if not root.is_dir():
        raise EvalError(
            f"--data {root}: no such directory; give the output of `natscale prepare` "
            f"(natscale prepare CONFIG --out {root})"
        )
    for path in (cfg_path, stats_path):
        if not path.is_file():
            raise EvalError(
                f"--data {root}: no {path.name}; give a directory written by `natscale prepare`"
            )
    try:
        cfg = load_config(cfg_path, PrepareConfig)
    except ConfigError as exc:
        raise EvalError(f"--data {root}: {exc}") from None
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{stats_path}: not a JSON file ({exc})") from None
    return prepared, cfg, stats


def agent_defaults(prepared_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``loop`` and ``tools`` sections of an eval config for a dataset of native tool calls:
    the tool-call loop with the tools its trajectories offered (``stats.json`` ``tools``, their
    schemas as they were trained: ``tools.schemas``) or that ReAct steps were turned into
    (``native_tools``), in the order training offered them (the eval offers ``tools.names`` in
    its order). A tool that is not built in still needs ``tools.user``."""
    from natscale.agent.react import FINISH
    from natscale.data.react_calls import offered_tools

    _, cfg, stats = _recorded(prepared_dir)
    native = [n for s in cfg.sources for n in (getattr(s, "native_tools", None) or [])]
    schemas = [] if native else list(stats.get("tools") or [])
    # native_tools are offered as prepare ordered them (built-ins first), not as written
    names = [t["function"]["name"] for t in (offered_tools(native) if native else schemas)]
    if not names:
        return {}
    tools: dict[str, Any] = {"names": [n for n in dict.fromkeys(names) if n != FINISH]}
    if schemas:
        tools["schemas"] = schemas
    return {"loop": {"protocol": "tool_calls"}, "tools": tools}


def prompt_defaults(prepared_dir: str | os.PathLike, *, file_given: bool = False) -> dict[str, Any]:
    """The ``prompt`` section of an eval config as the dataset in ``prepared_dir`` was prepared.

    ``file_given``: the user names the task prompt file (``prompt.file``), so a dataset prepared
    from several of them is no error and no file is taken from it."""
    from natscale.data.formats.nat_release import NatSource

    prepared, cfg, stats = _recorded(prepared_dir)
    root, cfg_path = prepared.root, prepared.prepare_config
    section: dict[str, Any] = {
        "template": stats.get("template", cfg.render.template),
        "instruction": cfg.render.instruction,
        "observation_role": cfg.render.observation_role,
        "strategy": cfg.strategy.model_dump(mode="json"),
    }
    if cfg.render.chat_template_kwargs:
        section["chat_template_kwargs"] = cfg.render.chat_template_kwargs
    if stats.get("end_of_turn"):
        section["end_of_turn"] = stats["end_of_turn"]
    if cfg.render.acknowledgement is not None:
        section["acknowledgement"] = cfg.render.acknowledgement
    if prepared.tokenizer.is_dir():
        section["tokenizer"] = str(prepared.tokenizer)
    prompts = [s for s in cfg.sources if isinstance(s, NatSource) and s.prompt]
    if prompts and not file_given:
        if len({(s.prompt, s.prompt_variant) for s in prompts}) > 1:
            raise EvalError(
                f"--data {root}: the dataset mixes several task prompt files; "
                "set prompt.file for the task you evaluate"
            )
        section["file"] = _recorded_prompt_file(prompts[0].prompt, root, cfg_path)
        if prompts[0].prompt_variant:
            section["variant"] = prompts[0].prompt_variant
    return section


def _recorded_prompt_file(recorded: str, root: Path, cfg_path: Path) -> str:
    """The task prompt file ``recorded`` in ``cfg_path`` as an absolute path. A relative one was
    taken from the directory `natscale prepare` ran in, which is not recorded: it is looked for
    from the working directory and from every folder above the dataset; found once (or as the
    same bytes everywhere) it is used, and said on stderr; else an error says how to name it."""
    path = Path(recorded).expanduser()
    hint = (
        f"the path comes from --data {root} ({cfg_path.name}); name the file the dataset was "
        "prepared with: --set prompt.file=PATH (or prompt.file in the eval config)"
    )
    if path.is_absolute():
        if not path.is_file():
            raise EvalError(f"prompt.file: {recorded}: task prompt file not found; {hint}")
        return str(path)
    places = [Path.cwd(), *Path(root).resolve().parents]
    found: list[Path] = []
    for place in places:
        candidate = (place / path).resolve()
        if candidate.is_file() and candidate not in found:
            found.append(candidate)
    if not found:
        raise EvalError(
            f"prompt.file: {recorded}: task prompt file not found (a relative path, looked for "
            f"from the working directory and the folders above {root}); {hint}"
        )
    if len({f.read_bytes() for f in found}) > 1:
        raise EvalError(
            f"prompt.file: {recorded} is relative and names different files from here "
            f"({', '.join(str(f) for f in found)}); {hint}"
        )
    print(
        f"natscale eval: prompt.file {recorded} (from --data {root}/{cfg_path.name}): using "
        f"{found[0]}",
        file=sys.stderr,
        flush=True,
    )
    return str(found[0])
