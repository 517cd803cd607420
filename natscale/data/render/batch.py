"""Rendering many training examples, optionally in worker processes (``num_proc``).

Examples are cut into chunks; each worker renders a chunk with one batched tokenizer call and
sends back the chunk's ids / masks concatenated (three arrays to pickle, not two per example).
Results come back in input order, so the output does not depend on ``num_proc``. A failure is
returned as ``(reason, message)`` for the caller's ``on_error``. With ``num_proc: 1`` the
tokenizer's batched calls use its own threads (unless ``TOKENIZERS_PARALLELISM`` says no); the
workers of ``num_proc > 1`` are one process a core each, their tokenizer threads off.

:func:`render_examples` renders a list it is given. :class:`RenderStream` renders examples as
they are read: each full chunk goes to the workers at once (as plain tuples, see
:func:`_slim`), so they tokenise while the caller reads the next ones, and a ``post`` function
(``prepare``'s trimming, ``natscale.data.fit``) runs on each chunk in the worker that rendered it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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


def _init_stream(renderer: Renderer, mode: str, ack: str | None, post: Callable | None) -> None:
    _STATE.update(renderer=renderer, mode=mode, ack=ack, post=post)


class _Turn(NamedTuple):  # what ``trajectory_messages`` reads of a Turn
    role: str
    content: str
    train: bool | None
    tool_calls: list | None
    name: str | None
    tool_call_id: str | None


class _Traj(NamedTuple):  # ... and of a Trajectory (with the tools the renderer reads)
    system: str
    instruction: str
    acknowledgement: str | None
    tools: list | None
    turns: list


class _Example(NamedTuple):
    traj: _Traj
    query: str


def _slim(ex) -> tuple:
    """What a worker needs to render an example, as plain tuples (they pickle several times
    faster than the Trajectory with its metadata)."""
    t = ex.traj
    turns = [(u.role, u.content, u.train, u.tool_calls, u.name, u.tool_call_id) for u in t.turns]
    return (ex.query, t.system, t.instruction, t.acknowledgement, t.tools, turns)


def _unslim(s: tuple) -> _Example:
    query, system, instruction, ack, tools, turns = s
    return _Example(_Traj(system, instruction, ack, tools, [_Turn(*u) for u in turns]), query)


def _render_slim(slims: list[tuple]) -> Any:
    s = _STATE
    out = compact_range(s["renderer"], [_unslim(x) for x in slims], s["mode"], s["ack"])
    return s["post"](out) if s["post"] else out


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


def _fork_pool(num_proc: int, initializer: Callable, initargs: tuple):
    """``num_proc`` forked workers (spawned where there is no fork) whose tokenizer threads are
    off (one process a core; its thread pool would deadlock after a fork); the setting is this
    process's again once they are started. Forked workers inherit ``initargs`` unpickled."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    before = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "false"
    try:
        return ctx.Pool(num_proc, initializer=initializer, initargs=initargs)
    finally:
        if before is None:
            del os.environ[PARALLELISM]
        else:
            os.environ[PARALLELISM] = before


def _set_threads(value: str | None) -> None:
    if value is None:
        os.environ.pop(PARALLELISM, None)
    else:
        os.environ[PARALLELISM] = value


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
    # forked workers inherit the examples without pickling them
    pool = _fork_pool(num_proc, _init, (renderer, examples, mode, acknowledgement))
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


class RenderStream:
    """Examples rendered as they are :meth:`put`, a chunk of ``chunk`` at a time (default ``CHUNK``,
    with workers half that).

    With ``num_proc > 1`` this process and ``num_proc - 1`` forked workers render: a full chunk
    goes to the workers while they hold fewer than two chunks each (one rendering, one waiting),
    else this process renders it itself, so ``num_proc`` processes share the cores, the reading
    included, and none is left idle or oversubscribed. The workers are forked when the second
    chunk is full (the first is held back until then: data of one chunk is rendered here, with
    no workers); while they run, this process tokenises on one thread. With ``num_proc: 1`` a
    full chunk is rendered here and then (the tokenizer's own threads on, unless
    ``TOKENIZERS_PARALLELISM`` says otherwise). :meth:`results` returns the result of every chunk
    put since its last call, in order: ``post(compact)`` of the chunk's :func:`compact_range`
    (``compact`` itself without ``post``), wherever it was rendered. ``post`` must be a
    module-level function (or a ``functools.partial`` of one) where workers are spawned rather
    than forked. Use it as a context manager: leaving it stops the workers.
    """

    def __init__(
        self,
        renderer: Renderer,
        *,
        mode: str = "turn",
        acknowledgement: str | None = None,
        num_proc: int = 1,
        post: Callable[[tuple], Any] | None = None,
        chunk: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.renderer, self.mode, self.ack = renderer, mode, acknowledgement
        # with workers, half chunks: the last one, which one worker renders alone, is shorter
        self.num_proc, self.post = num_proc, post
        self.chunk = chunk or (CHUNK if num_proc <= 1 else max(MIN_CHUNK, CHUNK // 2))
        self.on_progress = on_progress
        self._pending: list = []
        self._held: list | None = None
        self._out: list[tuple[int, Any, Any]] = []  # (size, async result or None, result)
        self._pool = None
        self._waiting = 0  # the first entry of _out that may still be with a worker
        self._threads: str | None = None  # TOKENIZERS_PARALLELISM before the workers started

    def __enter__(self) -> RenderStream:
        return self

    def __exit__(self, kind, *_exc) -> None:
        self.close(abort=kind is not None)

    def close(self, *, abort: bool = False) -> None:
        """Stop the workers (``abort``: without waiting for their work)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            if abort:
                pool.terminate()
            else:
                pool.close()
            pool.join()  # reaped workers: their CPU time shows in RUSAGE_CHILDREN
        finally:
            _set_threads(self._threads)

    def release(self) -> None:
        """Say that no more examples come (after :meth:`results`): the workers exit while the
        caller goes on, and :meth:`close` only reaps them."""
        if self._pool is not None and not self._out and not self._pending:
            self._pool.close()

    def call(self, fn: Callable, *args) -> Callable[[], Any]:
        """``fn(*args)`` in a worker (queued after the chunks sent so far), or here at once
        without workers; returns a function that gives the result, waiting for it. ``fn`` must
        be a module-level function (workers may be spawned)."""
        if self._pool is None:
            out = fn(*args)
            return lambda: out
        return self._pool.apply_async(fn, args).get

    def put(self, example) -> None:
        self._pending.append(example)
        if len(self._pending) >= self.chunk:
            self._dispatch()

    def _here(self, chunk: list) -> Any:
        out = compact_range(self.renderer, chunk, self.mode, self.ack)
        return self.post(out) if self.post else out

    def _dispatch(self) -> None:
        chunk, self._pending = self._pending, []
        if not chunk:
            return
        if self.num_proc <= 1:
            self._render_here(chunk)
            return
        if self._pool is None:
            if self._held is None:
                self._held = chunk
                return
            args = (self.renderer, self.mode, self.ack, self.post)
            self._pool = _fork_pool(self.num_proc - 1, _init_stream, args)
            # one tokenizer thread here too: the workers have the other cores
            self._threads = os.environ.get(PARALLELISM)
            os.environ[PARALLELISM] = "false"
            held, self._held = self._held, None
            self._submit(held)
        if self._busy() < 2 * (self.num_proc - 1):
            self._submit(chunk)
        else:
            self._render_here(chunk)

    def _busy(self) -> int:
        """Chunks with the workers, not yet rendered (they finish in the order sent)."""
        out = self._out
        while self._waiting < len(out) and (
            out[self._waiting][1] is None or out[self._waiting][1].ready()
        ):
            self._waiting += 1
        return sum(1 for _, job, _ in out[self._waiting :] if job is not None and not job.ready())

    def _render_here(self, chunk: list) -> None:
        self._out.append((len(chunk), None, self._here(chunk)))
        if self.on_progress:
            self.on_progress(len(chunk))

    def _submit(self, chunk: list) -> None:
        assert self._pool is not None
        job = self._pool.apply_async(_render_slim, ([_slim(ex) for ex in chunk],))
        self._out.append((len(chunk), job, None))

    def results(self) -> list:
        """The results of the chunks put since the last call, in order (waits for them)."""
        self._dispatch()
        if self._held is not None:  # a single chunk so far: not worth the workers
            held, self._held = self._held, None
            self._render_here(held)
        out = []
        for size, job, res in self._out:
            if job is not None:
                res = job.get()
                if self.on_progress:
                    self.on_progress(size)
            out.append(res)
        self._out, self._waiting = [], 0
        return out
