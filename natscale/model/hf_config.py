"""What transformers raises for a config.json it cannot build a model config from, said in one line.

transformers 5 builds configs as strict dataclasses: a wrongly typed field (``"vocab_size":
"2048"``) raises huggingface_hub's ``StrictDataclassFieldValidationError``, which is neither a
``ValueError`` nor a ``TypeError``; a config that is not a JSON object raises ``TypeError``.
Callers catch :data:`CONFIG_ERRORS` and report :func:`config_problem` with the file's path.
"""

from __future__ import annotations

try:
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # an older huggingface_hub: no strict dataclasses, nothing of this kind raised

    class StrictDataclassError(Exception):  # type: ignore[no-redef]
        """Stands in for huggingface_hub's (never raised)."""


# what building a config from a bad config.json raises (a missing model_type: KeyError/ValueError)
CONFIG_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, TypeError, StrictDataclassError)


def config_problem(exc: BaseException) -> str:
    """One line saying what is wrong: for a wrongly typed field, the field, the type expected and
    the value found ("Field 'vocab_size' expected int, got str (value: '2048')")."""
    if isinstance(exc, StrictDataclassError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the field's own error; the wrapper's text spans two lines
    return " ".join(str(exc).split())
