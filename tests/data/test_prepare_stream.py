"""Rendering while reading (``RenderStream``) and the per-chunk trimming (``fit.fit_chunk``):
the same rows, counts and errors (file and line) as rendering each window after reading it."""

import json
import multiprocessing

import datasets
import numpy as np
import pytest

from natscale.config.prepare import PrepareConfig
from natscale.data import fit
from natscale.data.errors import DataError
from natscale.data.prepare import prepare
from natscale.data.render import batch


def _fit_one(ids, mask, max_seq_len, overlong, trim_tail, counts):
    """The rules of fit.py for one example, written out plainly (the reference)."""
    trained = np.flatnonzero(mask[1:])
    if trained.size == 0:
        counts["no_trained_tokens"] += 1
        return None
    if trim_tail:
        end = int(trained[-1]) + 2
        counts["tail_tokens_trimmed"] += len(ids) - end
        ids, mask = ids[:end], mask[:end]
    if len(ids) > max_seq_len:
        if overlong == "drop":
            counts["too_long"] += 1
            return None
        counts["truncated"] += 1
        counts["truncated_tokens"] += len(ids) - max_seq_len
        ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        if not mask[1:].any():
            counts["no_trained_tokens_after_truncation"] += 1
            return None
    return ids, mask


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
@pytest.mark.parametrize("trim_tail", [True, False])
def test_fit_chunk_applies_the_rules_of_each_example(overlong, trim_tail):
    rng = np.random.default_rng(0)
    for trial in range(40):
        count = int(rng.integers(1, 30))
        failures = {int(k): ("render_error", f"bad {k}") for k in rng.integers(0, count, 3)}
        lengths = rng.integers(0, 40, count - len(failures))
        # sparse masks: many examples with nothing trained, or only in their first token
        ids = rng.integers(0, 1000, int(lengths.sum())).astype(np.int32)
        mask = rng.random(ids.shape[0]) < [0.02, 0.1, 0.5][trial % 3]
        max_seq_len = int(rng.integers(1, 30))
        got = fit.fit_chunk(
            (count, ids, mask, lengths, failures),
            max_seq_len=max_seq_len,
            overlong=overlong,
            trim_tail=trim_tail,
        )
        counts = dict.fromkeys(fit.COUNTERS, 0)
        want_status, want = [], []
        parts = iter(np.split(np.arange(ids.shape[0]), np.cumsum(lengths)[:-1]))
        for k in range(count):
            if k in failures:
                want_status.append(fit.FAILED)
                continue
            at = next(parts)
            one = _fit_one(ids[at], mask[at], max_seq_len, overlong, trim_tail, counts)
            want_status.append(fit.KEPT if one is not None else -1)
            if one is not None:
                want.append(one)
        status = got.status.tolist()
        assert [s if s in (fit.KEPT, fit.FAILED) else -1 for s in status] == want_status
        assert got.counts == counts
        assert got.failures == failures
        got_ids, got_masks = got.split() if len(got.lengths) else ([], [])
        assert len(got_ids) == len(want) == len(got.lengths) == len(got.trained)
        for (i, m), gi, gm, n, t in zip(
            want, got_ids, got_masks, got.lengths, got.trained, strict=True
        ):
            assert gi.tolist() == i.tolist() and gm.tolist() == m.tolist()
            assert n == len(i) and t == int(m[1:].sum())
        # a dropped example's code names the counter it added to
        for s in status:
            if s not in (fit.KEPT, fit.FAILED):
                assert counts[fit.DROPPED[s]] > 0


def _openai(n: int, bad: dict[int, str]) -> str:
    lines = []
    for i in range(n):
        rec = {
            "messages": [
                {"role": "user", "content": f"What is {i} + 1?"},
                {"role": "assistant", "content": f"Action: finish[{i + 1}]" * (1 + i % 7)},
            ],
            "answer": str(i + 1),
        }
        if bad.get(i) == "render":  # llama2 refuses a system message after the first
            rec["messages"] += [
                {"role": "system", "content": "late system message"},
                {"role": "assistant", "content": "x"},
            ]
        lines.append("{not json" if bad.get(i) == "json" else json.dumps(rec))
    return "\n".join(lines) + "\n"


def _cfg(tokenizer_dir, path, **over) -> PrepareConfig:
    return PrepareConfig.model_validate(
        {
            "sources": [{"format": "openai", "paths": [str(path)]}],
            "outcome": {"success": "em"},
            "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
            "pack": {"max_seq_len": 256, "window_examples": 70},
            **over,
        }
    )


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8: a few hundred records make many chunks, several in flight at once."""
    monkeypatch.setattr(batch, "CHUNK", 8)


def _rows(out):
    return datasets.load_from_disk(str(out))[:]


def test_render_errors_while_reading_name_their_line_in_every_mode(
    tokenizer_dir, tmp_path, small_chunks
):
    path = tmp_path / "o.jsonl"
    path.write_text(_openai(300, {3: "render", 150: "render", 151: "render", 299: "render"}))
    stats, rows = [], []
    for num_proc in (1, 2):
        cfg = _cfg(tokenizer_dir, path, on_error="skip", num_proc=num_proc)
        res = prepare(cfg, tmp_path / f"skip{num_proc}", progress=False)
        stats.append({k: v for k, v in res.stats.items() if k != "elapsed_s"})
        rows.append(_rows(res.out_dir))
        with pytest.raises(DataError, match=r"o.jsonl: line 4: llama2: a system message is only"):
            prepare(cfg.model_copy(update={"on_error": "raise"}), tmp_path / "r", progress=False)
        assert not (tmp_path / "r").exists()
        assert not multiprocessing.active_children()
    for st in stats:  # timings
        for part in (st["packing"], *st["packing"]["shards"]):
            assert part.pop("plan_wait_s") >= 0 and part.pop("plan_s") >= 0
    assert stats[0] == stats[1] and rows[0] == rows[1]
    st = stats[0]
    assert st["skipped"] == {"render_error": 4}
    where = [m.split(": ")[1] for m in st["skipped_examples"]["render_error"]]
    assert where == ["line 4", "line 151", "line 152"]  # the first three, in order
    assert st["total"]["examples"] == 296 and len(st["packing"]["shards"]) == 5


def test_a_bad_record_read_while_chunks_render_stops_cleanly(tokenizer_dir, tmp_path, small_chunks):
    path = tmp_path / "o.jsonl"
    path.write_text(_openai(200, {120: "json"}))
    cfg = _cfg(tokenizer_dir, path, num_proc=2)
    with pytest.raises(DataError, match=r"o.jsonl: line 121"):
        prepare(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    assert not multiprocessing.active_children()  # the workers are stopped, not left behind
    skip = prepare(cfg.model_copy(update={"on_error": "skip"}), tmp_path / "s", progress=False)
    one = prepare(
        cfg.model_copy(update={"on_error": "skip", "num_proc": 1}), tmp_path / "o", progress=False
    )
    assert skip.stats["skipped"] == {"malformed_json": 1} == one.stats["skipped"]
    assert skip.stats["total"] == one.stats["total"] and skip.stats["total"]["examples"] == 199
    assert _rows(skip.out_dir) == _rows(one.out_dir)


@pytest.fixture
def examples_for_stream(tokenizer_dir):
    from natscale.config.prepare import StrategyConfig
    from natscale.data import nat
    from natscale.data.formats import load_trajectories

    ex = tokenizer_dir.parent / "math_react"
    trajs = load_trajectories(
        ex / "trajectories.json", "nat", questions=ex / "questions.jsonl", prompt=ex / "prompt.json"
    )[:60]
    return nat.select(trajs, StrategyConfig())[0]


@pytest.mark.parametrize("paper_compat", [False, True])
def test_stream_gives_render_examples_results_in_order(
    tokenizer, examples_for_stream, paper_compat
):
    from natscale.data.render import Renderer
    from natscale.data.render.batch import RenderStream, render_examples

    r = Renderer(tokenizer, "llama2", paper_compat=paper_compat)
    want = render_examples(r, examples_for_stream)
    for num_proc in (1, 2):
        with RenderStream(r, num_proc=num_proc, chunk=7) as stream:
            parts, by_worker = [], 0
            for cut in (25, 60):  # two windows: results() twice, the workers kept between
                for ex in examples_for_stream[len(parts) : cut]:
                    stream.put(ex)
                by_worker += sum(job is not None for _, job, _ in stream._out)
                parts += [x for c in stream.results() for x in batch._expand(c)]
            assert (by_worker >= 2) == (num_proc == 2)  # the first two chunks go to the worker
            assert (stream._pool is not None) == (num_proc == 2)
        assert len(parts) == len(want)
        for a, b in zip(parts, want, strict=True):
            assert a.ids.tolist() == b.ids.tolist() and a.mask.tolist() == b.mask.tolist()


def test_stream_of_one_chunk_starts_no_workers(tokenizer, examples_for_stream):
    from natscale.data.render import Renderer
    from natscale.data.render.batch import RenderStream

    with RenderStream(Renderer(tokenizer, "llama2"), num_proc=2, chunk=100) as stream:
        for ex in examples_for_stream[:50]:
            stream.put(ex)
        (one,) = stream.results()
        assert stream._pool is None and one[0] == 50


@pytest.mark.parametrize("setting", [None, "true"])
def test_stream_restores_the_tokenizer_thread_setting(
    tokenizer, examples_for_stream, monkeypatch, setting
):
    """While its workers run, this process tokenises on one thread; afterwards the setting is
    what it was (unset stays unset)."""
    import os

    from natscale.data.render import Renderer
    from natscale.data.render.batch import PARALLELISM, RenderStream

    if setting is None:
        monkeypatch.delenv(PARALLELISM, raising=False)
    else:
        monkeypatch.setenv(PARALLELISM, setting)
    with RenderStream(Renderer(tokenizer, "llama2"), num_proc=2, chunk=5) as stream:
        for ex in examples_for_stream[:30]:
            stream.put(ex)
        assert stream._pool is not None and os.environ[PARALLELISM] == "false"
        stream.results()
    assert os.environ.get(PARALLELISM) == setting
