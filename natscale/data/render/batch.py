"""Rendering many training examples, optionally in worker processes (``num_proc``).

Examples are cut into chunks; each worker renders a chunk with one batched tokenizer call and
sends back the chunk's ids / masks concatenated (three arrays to pickle, not two per example).
Results come back in input order, so the output does not depend on ``num_proc``. A failure is
returned as ``(reason, message)`` for the caller's ``on_error``. With ``num_proc: 1`` the
tokenizer's batched calls use its own threads (unless ``TOKENIZERS_PARALLELISM`` says no); the
workers of ``num_proc > 1`` are one process a core each, their tokenizer threads off.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence

import numpy as np

from natscale.data.render import Encoded, Renderer, TemplateError, trajectory_messages
from natscale.data.render.paper import encode_paper_flat, segments
from natscale.data.render.tools import with_tools_in_system

PARALLELISM = "TOKENIZERS_PARALLELISM"  # the Rust tokenizer's own threads (default: on)
CHUNK = 128
MIN_CHUNK = 16
Result = Encoded | tuple[str, str]

_STATE: dict = {}


def _init(renderer: Renderer, examples: Sequence, mode: str, ack: str | None) -> None:
    _STATE.update(renderer=renderer, examples=examples, mode=mode, ack=ack)


def _render_range(bounds: tuple[int, int]) -> tuple:
    s = _STATE
    return compact_range(s["renderer"], s["examples"][bounds[0] : bounds[1]], s["mode"], s["ack"])


def _expand(compact: tuple) -> list[Result]:
    """The results of a :func:`compact_range` (their arrays are views into its arrays)."""
    count, ids, mask, lengths, failures = compact
    cuts = np.cumsum(lengths)[:-1]
    encs = iter(
        [Encoded(i, m) for i, m in zip(np.split(ids, cuts), np.split(mask, cuts), strict=True)]
    )
    return [failures[k] if k in failures else next(encs) for k in range(count)]


def render_range(
    renderer: Renderer, examples: Sequence, mode: str, ack: str | None
) -> list[Result]:
    """Render ``examples`` (objects with ``traj`` and ``query``) in one batched call."""
    return _expand(compact_range(renderer, examples, mode, ack))


def compact_range(renderer: Renderer, examples: Sequence, mode: str, ack: str | None) -> tuple:
    """:func:`render_range` as ``(count, ids, mask, lengths, failures)``: the encoded examples'
    ids and masks back to back, their lengths, and the failures by position (what a worker
    sends back: three arrays to pickle, not two per example)."""
    failures: dict[int, tuple[str, str]] = {}
    batch = []
    for k, ex in enumerate(examples):
        try:
            msgs = trajectory_messages(ex.traj, ex.query, mode=mode, acknowledgement=ack)
            if renderer.paper_compat:  # segment by segment, as the paper's code does
                batch.append(segments(with_tools_in_system(msgs, ex.traj.tools)))
            else:
                batch.append(renderer.pieces(msgs, tools=ex.traj.tools))
        except (TemplateError, ValueError) as exc:
            failures[k] = ("render_error", str(exc))
    if renderer.paper_compat:
        ids, mask, lengths = encode_paper_flat(renderer.encoder, batch, renderer.eos_id)
    else:
        ids, mask, lengths = renderer.encoder.encode_flat(batch)
    return len(examples), ids, mask, lengths, failures


def _chunks(n: int, num_proc: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each chunk: ``CHUNK`` examples, and with several workers smaller
    towards the end (down to ``MIN_CHUNK``), so that no worker waits long on another's last."""
    bounds, start = [], 0
    while start < n:
        size = CHUNK if num_proc <= 1 else min(CHUNK, (n - start) // (2 * num_proc))
        end = min(n, start + max(MIN_CHUNK, size))
        bounds.append((start, end))
        start = end
    return bounds


def render_examples(
    renderer: Renderer,
    examples: Sequence,
    *,
    mode: str = "turn",
    acknowledgement: str | None = None,
    num_proc: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> list[Result]:
    """Encoded ids/masks (or ``(reason, message)``) for every example, in order."""
    bounds = _chunks(len(examples), num_proc)
    results: list[Result] = []
    if num_proc <= 1 or len(bounds) <= 1:
        for b in bounds:
            results += render_range(renderer, examples[b[0] : b[1]], mode, acknowledgement)
            if on_progress:
                on_progress(b[1] - b[0])
        return results
    # forked workers inherit the examples without pickling them; the Rust tokenizer's own
    # threads are off in them (one process a core; its thread pool would deadlock after a
    # fork), and the setting is this process's again once they are started
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    before = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "false"
    try:
        pool = ctx.Pool(
            num_proc, initializer=_init, initargs=(renderer, examples, mode, acknowledgement)
        )
    finally:
        if before is None:
            del os.environ[PARALLELISM]
        else:
            os.environ[PARALLELISM] = before
    try:
        for b, part in zip(bounds, pool.imap(_render_range, bounds), strict=True):
            results += _expand(part)
            if on_progress:
                on_progress(b[1] - b[0])
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()  # reaped workers: their CPU time shows in RUSAGE_CHILDREN
    return results
