"""The `natscale` command: one subcommand per user task.

Each subcommand lives in its own module under ``natscale.cli`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
subcommand runs, so ``natscale --help`` stays fast (DeepSpeed alone takes seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import shutil
import sys
from pathlib import Path

# name -> (module under natscale.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "env": (
        "env",
        "versions, devices, DeepSpeed backend, which natscale ops are built or buildable",
    ),
    "prepare": ("prepare", "raw trajectories -> NAT-marked, loss-masked, packed dataset on disk"),
    "merge": ("merge", "join `natscale prepare` outputs (one per node) into one prepared folder"),
    "inspect": ("inspect", "print prepared examples with the text they train marked"),
    "train": (
        "train",
        "train a causal LM on packed rows with DeepSpeed ZeRO-3 (one rank of a job)",
    ),
    "plot": ("plot", "PNG curves of a run directory: loss by class, throughput"),
    "check-model": (
        "check_model",
        "does natscale train this model family exactly (packed rows, logits)? a tiny CPU check",
    ),
    "convert": (
        "convert",
        "ZeRO checkpoint -> Hugging Face safetensors folder; trajectory formats",
    ),
    "bench": (
        "bench",
        "throughput (tokens/s/device, MFU) against the paper's baseline; sweeps; scaling model",
    ),
    "selftest": (
        "selftest",
        "check that this cluster/launcher setup can train with ZeRO-3 (tiny model)",
    ),
    "launch": ("launch", "run a training job on one or many nodes over the DeepSpeed launcher"),
    "eval": ("eval", "run the model as a ReAct agent with its tools and score it; compare runs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natscale",
        description="Negative-Aware Training of LLM agents at cluster scale.",
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        _load(module).add_arguments(sp)
    return parser


def _load(module: str):
    return importlib.import_module(f"natscale.cli.{module}")


def _strip_local_rank(argv: list[str]) -> list[str]:
    """Drop the ``--local_rank=N`` that ``deepspeed`` (and torch.distributed.launch) put first.

    ``deepspeed --module natscale.cli train ...`` runs ``python -m natscale.cli --local_rank=0
    train ...``; the launcher also sets LOCAL_RANK, which is what natscale reads.
    """
    while argv and argv[0].startswith(("--local_rank", "--local-rank")):
        flag = argv.pop(0)
        value = flag.partition("=")[2] if "=" in flag else (argv.pop(0) if argv else "")
        os.environ.setdefault("LOCAL_RANK", value)
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status. As the process's own command line (``argv`` None),
    a command that started torch.distributed ends the process here (see ``exit_process``)."""
    try:
        code = _run(argv)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a socket or a worker's pipe: a real error
        code = 141  # 128 + SIGPIPE, as a C tool killed by it (`natscale env | head -3`)
    dist_mod = sys.modules.get("natscale.train.dist")
    if argv is None and dist_mod is not None and dist_mod.started():
        dist_mod.exit_process(code)
    return code


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has exited; if so stdout is pointed at /dev/null,
    so Python's own flush at exit does not print a second traceback."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return gone


class _NoCpuFallbackNotice(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." warning (every command,
    every rank) on a machine with no NVIDIA device, where CPU is the only answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU.")


def quiet_deepspeed_accelerator_notice() -> bool:
    """Install the filter on DeepSpeed's logger (before DeepSpeed is imported) where no NVIDIA
    device or driver is visible; on a GPU machine the warning means detection failed, so it stays.
    True if installed."""
    if any(Path("/dev").glob("nvidia[0-9]*")) or shutil.which("nvidia-smi"):
        return False
    logger = logging.getLogger("DeepSpeed")  # the logger deepspeed.utils.logging creates
    if not any(isinstance(f, _NoCpuFallbackNotice) for f in logger.filters):
        logger.addFilter(_NoCpuFallbackNotice())
    return True


_BUILDS_OPS = ("env", "train", "selftest", "bench")  # commands that may JIT-build native ops


def use_checkout_op_cache(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """Default ``TORCH_EXTENSIONS_DIR`` to the checkout's ``.cache/torch_extensions`` when that
    folder exists (``make install`` builds the ops there), so a plain ``natscale train`` after
    ``make install`` reuses them instead of compiling into ``~/.cache``. A set value wins."""
    if environ.get("TORCH_EXTENSIONS_DIR"):
        return None
    cache = Path(__file__).resolve().parents[2] / ".cache" / "torch_extensions"
    if not cache.is_dir():
        return None
    environ["TORCH_EXTENSIONS_DIR"] = str(cache)
    return str(cache)


def _run(argv: list[str] | None) -> int:
    argv = _strip_local_rank(list(sys.argv[1:] if argv is None else argv))
    quiet_deepspeed_accelerator_notice()
    if argv and argv[0] in ("-V", "--version"):
        from natscale import __version__

        print(f"natscale {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        if argv:
            print(f"natscale: unknown command {argv[0]!r}\n", file=sys.stderr)
        parser.print_help(sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in _BUILDS_OPS:
        use_checkout_op_cache()
    from natscale.train.dist import LaunchEnvError  # stdlib only; started() stays False

    try:
        return int(_load(args._module).run(args) or 0)
    except LaunchEnvError as exc:  # before any process group: each rank says why and exits
        print(f"natscale {args.command}: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
