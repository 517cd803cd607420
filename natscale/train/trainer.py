"""The training loop of ``natscale train``: one rank of a DeepSpeed ZeRO-3 job.

A step reads top to bottom: take this rank's micro-batches from the data cursor, all-reduce the
step's token/segment counts (the loss denominator, known before any forward), forward + backward
every micro-batch with the loss scaled so the *step's* gradient is the global normalised one,
let DeepSpeed step at the accumulation boundary, all-reduce the logging sums, write metrics.

Normalisation: DeepSpeed averages gradients over the W data-parallel ranks and (unless told not
to) divides each micro-batch loss by the accumulation count. We pass ``scale_wrt_gas=False`` and
backpropagate ``loss_sum * W / D`` where D is the whole step's denominator, so the applied
gradient is exactly ``grad(sum of all loss sums) / D`` for any ranks x accumulation split.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from natscale.atomic import atomic_write_json
from natscale.checkpoint import save as checkpoint
from natscale.checkpoint.hf_export import export_hf, original_use_cache, write_model_config
from natscale.checkpoint.layout import TAG_RE, RunDir, tag_step
from natscale.checkpoint.resume import ResumeError, agree_on_start
from natscale.checkpoint.universal import prepare_resume
from natscale.config.loader import save_config
from natscale.config.run import RunConfig
from natscale.data.prepared import PreparedDir
from natscale.train.batch import MicroBatch, collate
from natscale.train.dist import DistInfo
from natscale.train.engine import apply_optimizer_settings, build_engine
from natscale.train.metrics import (
    FlopsModel,
    MetricsWriter,
    memory_gib,
    peak_flops,
    time_weighted,
)
from natscale.train.preflight import Preflight
from natscale.train.rows import PreparedRowsReader, RowOrder, StepPlan

TOKEN_KINDS = ("slot", "nonpad", "trained")


class TrainingAborted(RuntimeError):
    """The run cannot go on (too many non-finite steps, a checkpoint that could not be written);
    the last good checkpoint is intact. ``summary`` is what ``summary.json`` records."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary


@dataclass
class TrainState:
    """What a checkpoint's client state carries besides model/optimizer/scheduler."""

    step: int = 0
    rows_consumed: int = 0
    tokens_seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))
    nonfinite_steps: int = 0


class StopSignal:
    """Remembers a SIGTERM (SLURM preemption) or SIGINT (Ctrl-C); the loop checkpoints and exits
    at the next step boundary. A second SIGINT, given at least ``AGAIN_S`` seconds after the first
    (a launcher passing on the same Ctrl-C comes sooner), aborts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    AGAIN_S = 2.0

    def __init__(self) -> None:
        self.received = False
        self.name: str | None = None  # the first signal received, e.g. "SIGINT"
        self._first_at: float | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if signum == signal.SIGINT and self._first_at is not None:
            if self.name == "SIGINT" and now - self._first_at >= self.AGAIN_S:
                raise KeyboardInterrupt
            return
        self.received = True
        self.name = self.name or signal.Signals(signum).name
        self._first_at = now
        if signum == signal.SIGINT:
            with contextlib.suppress(RuntimeError, OSError, ValueError, AttributeError):
                print(  # may interrupt a write to stderr: a reentrant write is skipped
                    "\nnatscale train: Ctrl-C: saving a checkpoint at the end of this step, "
                    "then stopping (Ctrl-C again to abort at once, without saving)",
                    file=sys.stderr,
                    flush=True,
                )

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Trainer:
    """One rank's training run: data plan, engine, state, the loop, checkpoints and export."""

    def __init__(
        self,
        run: RunConfig,
        info: DistInfo,
        checks: Preflight,
        *,
        resume: bool,
        fresh: bool = False,
        resume_from: str | None = None,
    ):
        self.run = run
        self.info = info
        self.checks = checks
        self.layout = RunDir(run.output_dir)
        self.run_dir = self.layout.root
        self.ckpts = self.layout.checkpoints
        self.ckpt_dir = self.ckpts.root
        self._plan_data()
        self.last_stop = min(self.total_steps, run.train.stop_after_steps or self.total_steps)
        self.resumed_from: str | None = None
        self.last_complete: str | None = None  # the newest complete tag this run loaded or saved
        self.writer: MetricsWriter | None = None
        latest = self._agree_on_start(resume=resume, fresh=fresh, resume_from=resume_from)
        if self.finished_at is not None:  # nothing to train: no engine, nothing written
            self.resumed_from = latest
            return
        self._build_engine()
        self.state = TrainState()
        if latest is not None:
            load_tag = self.converted["load_tag"] if self.converted else None
            self._restore(self._load(latest, load_tag))
            self._apply_run_settings()
            self._note_conversion()
        self.use_cache = original_use_cache(run.model)
        if info.rank == 0:
            self._write_run_files()
            self._open_metrics()

    # ---- setup -------------------------------------------------------------------------------
    def _plan_data(self) -> None:
        """The prepared rows, their order and this rank's share of each step."""
        run, info = self.run, self.info
        self.rows = PreparedRowsReader(run.data.path)
        self.class_names = PreparedDir(run.data.path).class_names(self.rows.num_classes())
        self.plan = StepPlan(
            info.world_size, info.rank, run.train.grad_accum, run.data.micro_batch_rows
        )
        self.order = RowOrder(len(self.rows), seed=run.train.seed, shuffle=run.data.shuffle)
        self.total_steps = run.train.steps or self.plan.steps_for_epochs(
            len(self.rows), run.train.epochs
        )
        self.data_identity = self._data_identity()  # recorded in every checkpoint

    def _agree_on_start(self, *, resume: bool, fresh: bool, resume_from: str | None) -> str | None:
        """The checkpoint tag to resume from (None: start fresh), converted if needed."""
        info = self.info
        # rank 0 checks the checkpoint (or moves a previous run aside) before any rank loads
        plan = agree_on_start(
            self.run_dir, resume=resume, fresh=fresh, requested=resume_from, rank=info.rank
        )
        if info.rank == 0:
            for note in plan.notes:
                print(f"natscale train: note: {note}", file=sys.stderr, flush=True)
        latest = plan.tag
        # the checkpoint is at (or past) the last step of this run: nothing to do
        self.finished_at = (
            tag_step(latest)
            if latest is not None and TAG_RE.match(latest) and tag_step(latest) >= self.last_stop
            else None
        )
        self.converted = (  # a checkpoint of another world size, made loadable here
            prepare_resume(self.ckpt_dir, latest, world_size=info.world_size, rank=info.rank)
            if latest is not None and self.finished_at is None
            else None
        )
        return latest

    def _build_engine(self) -> None:
        self.bundle = build_engine(
            self.run,
            world_size=self.info.world_size,
            total_steps=self.total_steps,
            load_universal=self.converted is not None,
        )
        self.engine = self.bundle.engine
        self.device = self.engine.device
        self.flops = FlopsModel.from_model(self.bundle.model.hf_model, self.bundle.hf_config)
        self.peak_flops, self.device_label = peak_flops(self.run.logging.peak_tflops)

    def _open_metrics(self) -> None:
        self.writer = MetricsWriter(
            self.run_dir, tensorboard=self.run.logging.tensorboard, resume_step=self.state.step
        )
        for note in self.writer.notes:
            print(f"natscale train: note: {note}", file=sys.stderr, flush=True)

    def _data_identity(self) -> dict[str, Any]:
        """What the data cursor of a checkpoint is a position in: the prepared rows (their
        number and tokens) and their order (seed, shuffle)."""
        try:
            stats = json.loads(PreparedDir(self.run.data.path).stats.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stats = {}  # preflight read it; a file gone since changes nothing we can check
        total = stats.get("total") if isinstance(stats, dict) else None
        total = total if isinstance(total, dict) else {}
        return {
            "rows": len(self.rows),
            "tokens": total.get("tokens"),
            "trained_tokens": total.get("trained_tokens"),
            "seed": self.run.train.seed,
            "shuffle": self.run.data.shuffle,
        }

    def _check_data(self, tag: str, saved: Any) -> None:
        """Refuse to resume ``tag`` on other data (its row cursor would point into other rows);
        note a changed order (seed, shuffle), which a user may mean."""
        if not isinstance(saved, dict):  # a checkpoint from before this was recorded
            return
        now = self.data_identity
        changed = [k for k in ("rows", "tokens", "trained_tokens") if saved.get(k) != now[k]]
        if changed:
            was = ", ".join(f"{k} {saved.get(k)}" for k in changed)
            raise ResumeError(
                f"data.path {self.run.data.path} is not the data checkpoint {tag} was trained on "
                f"({was} then; {', '.join(f'{k} {now[k]}' for k in changed)} now): its cursor "
                f"(row {self.state.rows_consumed}) would point into other rows. Resume with the "
                "data the run started with; to train this model on new data, start a new run "
                f"from its weights (model.path: {self.layout.hf}, or `natscale convert zero-to-hf`)"
            )
        order = [k for k in ("seed", "shuffle") if k in saved and saved[k] != now[k]]
        if order and self.info.rank == 0:
            print(
                f"natscale train: note: {', '.join(f'{k} {saved[k]} -> {now[k]}' for k in order)}"
                f" since {tag}: the rows after row {self.state.rows_consumed} follow the new "
                "order, so within this epoch some rows may repeat and others be skipped",
                file=sys.stderr,
                flush=True,
            )

    def _restore(self, client: dict[str, Any]) -> None:
        self.state = TrainState(
            step=int(client["step"]),
            rows_consumed=int(client["rows_consumed"]),
            tokens_seen=dict(client["tokens_seen"]),
            nonfinite_steps=int(client["nonfinite_steps"]),
        )
        self.resumed_from = self.last_complete = client["tag"]
        self._check_data(client["tag"], client.get("data"))

    def _load(self, tag: str, load_tag: str | None) -> dict[str, Any]:
        """The client state of checkpoint ``tag``, loaded into the engine; a checkpoint whose
        tensors do not fit the model is a :class:`ResumeError` naming both."""
        try:
            return checkpoint.load(self.engine, self.ckpt_dir, tag=tag, load_tag=load_tag)
        except RuntimeError as exc:
            text = str(exc)
            if "size" not in text or ("match" not in text and "mismatch" not in text):
                raise
            model = self.run.model
            source = f"model.path {model.path}" if model.path else f"model.config {model.config}"
            raise ResumeError(
                f"checkpoint {self.ckpt_dir / tag} does not fit the model of {source} "
                f"({text.splitlines()[0]}); resume with the model the run was trained with "
                f"({self.layout.model_config}/config.json), or start over with --fresh or "
                "another output_dir"
            ) from exc

    def _apply_run_settings(self) -> None:
        """The run config's optimizer values replace the checkpoint's, with a note for each."""
        notes = apply_optimizer_settings(self.engine.lr_scheduler, self.run.train)
        if notes and self.info.rank == 0:
            print(
                f"natscale train: note: the run config changes what {self.resumed_from} holds: "
                f"{', '.join(notes)}; the new values apply from step {self.state.step + 1}",
                file=sys.stderr,
                flush=True,
            )

    def _note_conversion(self) -> None:
        if self.converted is None or self.info.rank != 0:
            return
        n = self.converted["saved_world_size"]
        print(
            f"natscale train: note: checkpoint {self.resumed_from} was written by {n} "
            f"rank{'s' if n > 1 else ''}, resuming on {self.info.world_size}: "
            f"converted to a universal checkpoint at {self.converted['path']} (weights, optimizer "
            f"and LR schedule restored; data continues at row {self.state.rows_consumed}; the "
            "per-rank RNG states are not restored)",
            file=sys.stderr,
            flush=True,
        )

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_model_config(  # first: its marker says a run started here (train preflight)
            self.bundle.model.hf_model,
            self.layout.model_config,
            use_cache=self.use_cache,
            tokenizer_dir=self.checks.tokenizer_dir,
        )
        save_config(self.run, self.layout.config)
        atomic_write_json(self.layout.ds_config, self.bundle.ds_config)

    # ---- one optimizer step ------------------------------------------------------------------
    def _micro_batches(self) -> list[MicroBatch]:
        return [
            collate(
                self.rows.rows(ids),
                loss_norm=self.run.train.loss_norm,
                vocab_size=self.checks.vocab_size,
                where=f"data.path {self.run.data.path}",
            )
            for ids in self.plan.micro_batches(self.order, self.state.rows_consumed)
        ]

    def _counts(self, batches: list[MicroBatch]) -> torch.Tensor:
        """Global [trained tokens, trained segments, slot, nonpad, sum L_seg^2, the same summed
        over the attention layers as each computes it (FlopsModel.layer_sum_sq)] of the step."""
        local = torch.tensor(
            [
                [
                    b.num_trained_tokens,
                    b.num_trained_segments,
                    b.num_slot_tokens,
                    b.num_nonpad_tokens,
                    b.sum_sq_segment_len,
                    self.flops.layer_sum_sq(b.segment_len_S),
                ]
                for b in batches
            ],
            dtype=torch.int64,
            device=self.device,
        ).sum(0)
        dist.all_reduce(local)
        return local

    def train_step(self, stop: StopSignal) -> dict[str, Any]:
        """Forward/backward all micro-batches, step, and return the step's (global) statistics."""
        num_classes = len(self.class_names)
        lr = self.engine.get_lr()[0]
        t0 = time.perf_counter()
        batches = self._micro_batches()  # reading + collating rows: the data-loader wait
        data_time = time.perf_counter() - t0
        counts = self._counts(batches)
        denom_index = 0 if self.run.train.loss_norm == "token" else 1
        scale = self.info.world_size / counts[denom_index].clamp(min=1).to(torch.float32)
        router = self.bundle.model.router_aux
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        router_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        nll_by_class = torch.zeros(num_classes, dtype=torch.float64, device=self.device)
        count_by_class = torch.zeros(num_classes, dtype=torch.float64, device=self.device)
        for mb in batches:
            loss_sum, seg_nll, seg_count, router_aux = self.engine(**mb.model_inputs(self.device))
            objective = loss_sum * scale
            if router_aux is not None:
                # HF adds coef * aux to each batch's mean loss: after DeepSpeed's mean over
                # ranks, this adds coef * (the step's mean over micro-batches and ranks)
                objective = objective + router_aux * (router.coef / len(batches))
                router_acc += router_aux.detach().double()
            self.engine.backward(objective, scale_wrt_gas=False)
            self.engine.step()
            loss_acc += loss_sum.detach().double()
            cls = mb.segment_class_S.to(self.device)
            nll_by_class.index_add_(0, cls, seg_nll.detach().double())
            count_by_class.index_add_(0, cls, seg_count.double())
        flag = torch.tensor([float(stop.received)], dtype=torch.float64, device=self.device)
        sums = torch.cat([loss_acc[None], nll_by_class, count_by_class, router_acc[None], flag])
        dist.all_reduce(sums)
        sums = sums.tolist()
        counts = counts.tolist()
        nll, cnt = sums[1 : 1 + num_classes], sums[1 + num_classes : 1 + 2 * num_classes]
        return {
            "lr": lr,
            "loss": sums[0] / max(counts[denom_index], 1),
            "loss_by_class": {
                n: (a / c if c else None)
                for n, a, c in zip(self.class_names, nll, cnt, strict=True)
            },
            "trained_tokens_by_class": {
                n: int(c) for n, c in zip(self.class_names, cnt, strict=True)
            },
            "tokens": dict(zip(TOKEN_KINDS, (counts[2], counts[3], counts[0]), strict=True)),
            "trained_segments": counts[1],
            "sum_sq_segment_len": counts[4],
            "layer_sum_sq": counts[5],
            "applied": bool(self.engine.was_step_applied()),
            "grad_norm": self.engine.get_global_grad_norm(),
            "router_aux_loss": (
                sums[-2] / (len(batches) * self.info.world_size) if router is not None else None
            ),
            "stop_requested": sums[-1] > 0,
            "data_time_s": data_time,
        }

    # ---- the loop ----------------------------------------------------------------------------
    def _record(self, out: dict[str, Any], step_time: float) -> dict[str, Any]:
        tok = out["tokens"]
        per_gpu = self.info.world_size * step_time
        flops = self.flops.step_flops(
            nonpad=tok["nonpad"],
            trained=tok["trained"],
            sum_sq_segment_len=out["sum_sq_segment_len"],
            layer_sum_sq=out["layer_sum_sq"],
        )
        grad_norm = out["grad_norm"]
        return {
            "step": self.state.step,
            "epoch": self.state.rows_consumed / len(self.rows),
            "loss": out["loss"],
            "loss_by_class": out["loss_by_class"],
            "trained_tokens_by_class": out["trained_tokens_by_class"],
            "lr": out["lr"],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "router_aux_loss": out["router_aux_loss"],
            "skipped": not out["applied"],
            "nonfinite_steps": self.state.nonfinite_steps,
            "tokens": tok,
            "tokens_seen": dict(self.state.tokens_seen),
            "tokens_per_s_per_gpu": {k: v / per_gpu for k, v in tok.items()},
            "tflops_per_gpu": flops / per_gpu / 1e12,
            "mfu": flops / per_gpu / self.peak_flops if self.peak_flops else None,
            "step_time_s": step_time,
            "data_time_s": out["data_time_s"],
            "memory": memory_gib(),
            "time": time.time(),
        }

    def _save(self) -> str:
        client = asdict(self.state)
        client["world_size"] = self.info.world_size
        client["data"] = self.data_identity
        tag = checkpoint.save(
            self.engine,
            self.ckpt_dir,
            step=self.state.step,
            client_state=client,
            keep_last=self.run.checkpoint.keep_last,
            fallback=self.last_complete,
        )
        self.last_complete = tag
        return tag

    def train(self, stop: StopSignal | None = None) -> dict[str, Any]:
        """Run until ``total_steps``, ``stop_after_steps``, SIGTERM or SIGINT; returns the summary.

        Install ``stop`` early (before loading the model) so that a signal during start-up is
        honoured at the first step boundary too.
        """
        stop = stop or StopSignal()
        if self.finished_at is not None:
            stop.restore()
            return {
                "status": "nothing_to_do",
                "steps": self.finished_at,
                "total_steps": self.total_steps,
                "last_stop": self.last_stop,
                "checkpoint": str(self.ckpt_dir / self.resumed_from),
            }
        try:
            return self._loop(stop)
        finally:
            stop.restore()
            if self.writer is not None:
                self.writer.close()

    def _loop(self, stop: StopSignal) -> dict[str, Any]:
        run, state = self.run, self.state
        last_stop = self.last_stop
        bar = self._progress_bar()
        started, start_step = time.time(), state.step
        records: list[dict[str, Any]] = []
        saved_at = state.step if self.resumed_from else -1
        signal_name: str | None = None
        while state.step < last_stop:
            t0 = time.perf_counter()
            out = self.train_step(stop)
            step_time = time.perf_counter() - t0
            state.step += 1
            state.rows_consumed += self.plan.rows_per_step
            for kind in TOKEN_KINDS:
                state.tokens_seen[kind] += out["tokens"][kind]
            if not out["applied"]:
                state.nonfinite_steps += 1
                self._warn_nonfinite(out)
            record = self._record(out, step_time)
            records.append(record)
            if self.writer is not None:
                self.writer.write(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False
                )
            if state.nonfinite_steps > run.train.max_nonfinite_steps:
                if bar is not None:
                    bar.close()
                self._abort(
                    "nonfinite_steps",
                    f"{state.nonfinite_steps} steps had a non-finite loss or gradient "
                    f"(train.max_nonfinite_steps={run.train.max_nonfinite_steps}); stopping at "
                    f"step {state.step}. {self._last_good()}",
                    records,
                    started,
                    start_step,
                )
            if out["stop_requested"]:
                signal_name = stop.name or "SIGTERM"  # a rank without the signal: the usual one
                break
            every = run.checkpoint.every_steps
            if every and state.step % every == 0 and state.step < last_stop:
                saved_at = state.step
                self._save_or_abort(records, started, start_step, bar)
        if bar is not None:
            bar.close()
        reason = end_reason(state.step, last_stop, self.total_steps, signal_name)
        if signal_name is not None and reason != signal_name and self.info.rank == 0:
            print(
                f"natscale train: note: {signal_name} arrived during step {state.step}, the "
                f"last of this run: it ends as it would have without it ({reason})",
                file=sys.stderr,
                flush=True,
            )
        # a run stopped early (a signal, stop_after_steps) always saves: it is meant to resume
        if saved_at != state.step and (run.checkpoint.at_end or reason != "finished"):
            self._save_or_abort(records, started, start_step, None)
        exported = None
        if reason == "finished" and run.checkpoint.export_hf:
            exported = export_hf(
                self.engine,
                self.bundle.model.hf_model,
                self.layout.hf,
                use_cache=self.use_cache,
                tokenizer_dir=self.checks.tokenizer_dir,
            )
        return self._summary(
            records, reason, time.time() - started, state.step - start_step, exported
        )

    def _save_or_abort(
        self, records: list[dict[str, Any]], started: float, start_step: int, bar: Any
    ) -> None:
        try:
            self._save()
        except checkpoint.CheckpointSaveError as exc:
            if bar is not None:
                bar.close()
            self._abort("checkpoint_save_failed", str(exc), records, started, start_step)

    def _last_good(self) -> str:
        tag = self.ckpts.read_latest()
        if tag is None:
            every = self.run.checkpoint.every_steps
            return (
                f"No checkpoint was saved before this (checkpoint.every_steps={every}), so there "
                "is nothing to resume from."
            )
        return (
            f"Last good checkpoint: {self.ckpt_dir / tag}; after fixing the cause, continue from "
            "it with --resume."
        )

    def _abort(
        self,
        reason: str,
        message: str,
        records: list[dict[str, Any]],
        started: float,
        start_step: int,
    ) -> None:
        """Raise TrainingAborted (every rank) with the summary that summary.json records."""
        summary = self._summary(
            records, reason, time.time() - started, self.state.step - start_step, None
        )
        summary.update(status="aborted", message=message)
        raise TrainingAborted(message, summary)

    def _warn_nonfinite(self, out: dict[str, Any]) -> None:
        if self.info.rank == 0:
            print(
                f"natscale train: warning: step {self.state.step} skipped, non-finite loss or "
                f"gradient (loss={out['loss']}, grad_norm={out['grad_norm']}); "
                f"{self.state.nonfinite_steps} so far, limit {self.run.train.max_nonfinite_steps}",
                file=sys.stderr,
                flush=True,
            )

    def _progress_bar(self) -> Any:
        if self.info.rank != 0 or not self.run.logging.progress_bar:
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            unit="step",
            mininterval=1.0,
        )

    def _summary(
        self,
        records: list[dict[str, Any]],
        reason: str,
        wall_s: float,
        num_steps: int,
        exported: Path | None,
    ) -> dict[str, Any]:
        timed = records[1:] or records  # the first step includes one-off warm-up
        total_time = sum(r["step_time_s"] for r in timed)
        world = self.info.world_size
        rates, tflops, data_wait = None, None, None  # no step timed: unknown (null in JSON)
        if total_time > 0:
            rates = {
                k: sum(r["tokens"][k] for r in timed) / total_time / world for k in TOKEN_KINDS
            }
            tflops = time_weighted(timed, "tflops_per_gpu")
            data_wait = sum(r["data_time_s"] for r in timed) / total_time
        last = records[-1] if records else {}
        latest = self.ckpts.read_latest()
        router = self.bundle.model.router_aux
        return {
            "status": "completed",
            "reason": reason,
            "steps": self.state.step,
            "total_steps": self.total_steps,
            "steps_this_run": num_steps,
            "resumed_from": self.resumed_from,
            "wall_s": wall_s,
            "world_size": world,
            "final_loss": last.get("loss"),
            "final_loss_by_class": last.get("loss_by_class"),
            "first_loss": records[0]["loss"] if records else None,
            "tokens_seen": dict(self.state.tokens_seen),
            "tokens_per_s_per_gpu": rates,
            "tflops_per_gpu": tflops,
            "mfu": time_weighted(timed, "mfu"),
            "data_wait_share": data_wait,
            "device": self.device_label,
            "attn_implementation": self.bundle.attn_implementation,
            "loss_implementation": loss_implementation(self.bundle.model.loss),
            "router_aux_loss_coef": router.coef if router is not None else None,
            "final_router_aux_loss": last.get("router_aux_loss"),
            "nonfinite_steps": self.state.nonfinite_steps,
            "checkpoint": str(self.ckpt_dir / latest) if latest else None,
            "hf_export": str(exported) if exported else None,
        }


def end_reason(step: int, last_stop: int, total_steps: int, signal_name: str | None) -> str:
    """Why the loop ended after ``step``: the signal that stopped it before ``last_stop``; a
    signal during the last step stops nothing, so that run ends as ``finished`` (and exports) or
    at ``stop_after_steps`` like any other."""
    if signal_name is not None and step < last_stop:
        return signal_name
    return "finished" if step >= total_steps else "stop_after_steps"


def loss_implementation(loss: str) -> dict[str, Any]:
    """Which loss ran and why: the segment-loss implementation per device (never a silent
    fallback to the [T, V] reference) for ``model.loss: fused``; the logits head otherwise."""
    if loss != "fused":
        return {"head": loss, "impl": "logits + F.cross_entropy"}
    from natscale.ops.segment_ce.dispatch import last_choice

    return {"head": loss, **last_choice()}
