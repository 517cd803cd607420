"""The tokenizer's chat template compiled once, for renders that skip ``apply_chat_template``'s
per-call work (see ``natscale.data.render.hf``)."""

from __future__ import annotations


def compiled_template(tokenizer) -> tuple | None:
    """The tokenizer's chat template compiled as ``apply_chat_template`` compiles it, and the
    variables it renders it with (the special tokens); None where ``transformers`` differs.

    In jinja's own sandbox the check of every attribute read (``content.strip``, ``loop.index0``)
    is most of the render's time; for the plain types the template reads (``_memo_types``) its
    answer depends on the type and the attribute's name alone (``isinstance`` tests and a name
    prefix), so here it is memoised for them, in an overlay: the environment ``transformers``
    shares is untouched."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from transformers.utils.chat_template_utils import (
            _compile_jinja_template,
            _plain_template_data,
        )

        source = tokenizer.get_chat_template(None, None)
        compiled = _compile_jinja_template(source)
        variables = _plain_template_data(dict(tokenizer.special_tokens_map))
        if type(compiled.environment) is ImmutableSandboxedEnvironment:
            env = compiled.environment.overlay()
            env.is_safe_attribute = _memoised(env.is_safe_attribute)
            compiled = env.from_string(source)
    except Exception:  # another transformers: apply_chat_template every time
        return None
    return compiled, variables


def _memo_types() -> tuple[type, ...]:
    from jinja2.runtime import LoopContext

    return (str, dict, list, int, LoopContext)


def _memoised(check):
    """jinja's ``is_safe_attribute(obj, attr, value)`` memoised by ``(type(obj), attr)`` for
    objects of exactly the ``_memo_types``."""
    memo_types = frozenset(_memo_types())
    safe: dict[tuple[type, str], bool] = {}

    def is_safe_attribute(obj, attr: str, value) -> bool:
        kind = type(obj)
        if kind not in memo_types:
            return check(obj, attr, value)
        ok = safe.get((kind, attr))
        if ok is None:
            ok = safe[kind, attr] = check(obj, attr, value)
        return ok

    return is_safe_attribute
