"""Op builders for natscale's native extensions, in the manner of DeepSpeed's ``op_builder``.

Each builder knows its sources and flags, says whether it can be built here (and why not), and
``load()`` returns the extension module: a prebuilt one (``NATSCALE_BUILD_OPS=1 pip install
--no-build-isolation .``) when importable, else a JIT build with torch's cpp_extension + ninja into
``$TORCH_EXTENSIONS_DIR`` (rebuilt automatically when a source or flag changes).

A prebuilt extension carries the hash of the sources it was built from (``sources_hash``) and is
refused, with the rebuild command, when the sources here differ. A JIT build runs under an
exclusive ``flock`` on its build folder (released by the kernel when its process dies), so a
``lock`` file that torch's own file lock leaves behind after a killed build is known to be stale
and removed instead of hanging every later load.

Environment knobs: ``NATSCALE_CUDA_ARCH_LIST`` (e.g. ``"9.0"`` or ``"8.0;9.0"``; default: torch's
detection of the visible GPUs, or ``TORCH_CUDA_ARCH_LIST``), ``NATSCALE_NVCC_THREADS`` (default 4),
``CXX`` (the host compiler).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.resources
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

#: how to rebuild the prebuilt extensions in place (from the repository root)
REBUILD_COMMAND = "NATSCALE_BUILD_OPS=1 python setup.py build_ext --inplace"


def csrc_dir() -> Path | None:
    """The op sources, ``natscale/csrc/``: package data, so a checkout and an installed wheel
    read them alike; None when an installation lacks them."""
    folder = importlib.resources.files("natscale") / "csrc"
    return Path(str(folder)) if folder.is_dir() else None


class OpBuilder:
    """One native extension: sources, flags, availability and loading."""

    #: JIT module name (also the folder under ``$TORCH_EXTENSIONS_DIR``).
    name: str = ""
    #: implementation name shown by ``natscale env``.
    label: str = ""
    #: module path of the prebuilt extension (setup.py ``ext_modules``).
    prebuilt_name: str = ""
    with_cuda: bool = False

    def __init__(self) -> None:
        self._module: ModuleType | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    # ---- sources and flags -------------------------------------------------------------------
    def source_names(self) -> list[str]:
        raise NotImplementedError

    def source_root(self) -> Path | None:
        """The ``csrc/`` folder the sources are read from."""
        return csrc_dir()

    def sources(self) -> list[str]:
        root = self.source_root()
        if root is None:
            raise FileNotFoundError("natscale's op sources (natscale/csrc/) are not installed")
        return [str(root / name) for name in self.source_names()]

    def include_dirs(self) -> list[str]:
        root = self.source_root()
        return [str(root / Path(self.source_names()[0]).parent)] if root else []

    def sources_hash(self) -> str | None:
        """sha256 (16 hex digits) of the sources and the headers beside them; None without csrc/."""
        root = self.source_root()
        if root is None:
            return None
        files = {Path(src) for src in self.sources()}
        for folder in self.include_dirs():
            files.update(p for p in Path(folder).iterdir() if p.suffix in (".h", ".cuh"))
        digest = hashlib.sha256()
        for path in sorted(files):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
        return digest.hexdigest()[:16]

    def cxx_flags(self) -> list[str]:
        # -fno-trapping-math lets g++ vectorize the clamped exp of the CPU kernel; -fopenmp-simd
        # enables `omp simd` without linking a second OpenMP runtime next to torch's.
        flags = ["-O3", "-fno-trapping-math", "-fopenmp-simd"]
        digest = self.sources_hash()
        if digest is not None:  # exposed as the module's `sources_hash` (segment_ce_api.cpp)
            flags.append(f"-DNATSCALE_SOURCES_HASH=h{digest}")
        return flags

    def nvcc_flags(self) -> list[str]:
        return []

    # ---- availability ------------------------------------------------------------------------
    def compatible(self) -> tuple[bool, str]:
        """Whether this machine could build the extension (no build is started)."""
        if csrc_dir() is None:
            return False, "sources not found (natscale/csrc/ is missing from this installation)"
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            return False, f"no C++ compiler ({compiler!r} not on PATH; set CXX)"
        from torch.utils.cpp_extension import is_ninja_available

        from natscale.ops.first_build import use_natscale_ninja

        # the wheel's ninja, also where the virtualenv is not activated; load() checks here
        # before every JIT build, so the build runs it too
        use_natscale_ninja()
        if not is_ninja_available():
            return False, "ninja not found (pip install ninja)"
        return True, f"JIT-buildable with {compiler} + ninja"

    def jit_build_dir(self) -> Path:
        """Where cpp_extension.load() builds this op (mirrors torch's naming, creates nothing)."""
        from natscale.ops.first_build import extensions_root

        return extensions_root() / self.name

    def prebuilt(self) -> ModuleType | None:
        try:
            return importlib.import_module(self.prebuilt_name)
        except ImportError:
            return None

    def stale(self, module: ModuleType) -> str | None:
        """Why the prebuilt ``module`` must not be used (built from other sources), or None."""
        want = self.sources_hash()
        if want is None:  # an installation without natscale/csrc/: nothing to compare with
            return None
        got = getattr(module, "sources_hash", "") or "none"
        if got == want:
            return None
        return (
            f"the prebuilt {getattr(module, '__file__', self.prebuilt_name)} was built from other "
            f"sources (hash {got}; the sources here: {want}); rebuild it with "
            f"`{REBUILD_COMMAND}` in the repository root, or delete it to JIT-build"
        )

    def status(self) -> dict[str, Any]:
        """``{"name", "built", "buildable", "reason"}`` for ``natscale env``; never builds."""
        buildable, reason = self.compatible()
        prebuilt = self.prebuilt() if self._module is None else None
        if self._module is not None:
            built, reason = True, f"loaded from {getattr(self._module, '__file__', '?')}"
        elif prebuilt is not None and (stale := self.stale(prebuilt)) is not None:
            built, buildable, reason = False, False, f"refused: {stale}"
            self._error = reason
        elif prebuilt is not None:
            built, reason = True, f"prebuilt ({self.prebuilt_name})"
        elif (self.jit_build_dir() / f"{self.name}.so").exists():
            built = True
            reason = f"JIT cache {self.jit_build_dir()} (rebuilt if sources changed)"
        else:
            built = False
        if self._error is not None:
            refused = self._error.startswith("refused: ")
            reason = self._error if refused else f"last load failed: {self._error}"
        return {"name": self.label, "built": built, "buildable": buildable, "reason": reason}

    def is_available(self) -> tuple[bool, str]:
        """(loaded, prebuilt, JIT-cached or buildable here, and no failed load; the reason)."""
        status = self.status()
        ok = (status["built"] or status["buildable"]) and self._error is None
        return ok, status["reason"]

    def usable(self) -> bool:
        """Loaded, or worth loading (see :meth:`is_available`)."""
        return self._module is not None or self.is_available()[0]

    # ---- loading -----------------------------------------------------------------------------
    def load(self, verbose: bool = False) -> ModuleType:
        """The extension module: prebuilt if importable, else JIT-built (once per process)."""
        with self._lock:
            if self._module is not None:
                return self._module
            module = self.prebuilt()
            if module is not None and (stale := self.stale(module)) is not None:
                self._error = f"refused: {stale}"
                raise RuntimeError(f"natscale op {self.name}: {stale}")
            if module is None:
                ok, reason = self.compatible()
                if not ok:
                    self._error = reason
                    raise RuntimeError(f"cannot build natscale op {self.name}: {reason}")
                try:
                    module = self._jit_load(verbose)
                except Exception as exc:
                    self._error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    raise RuntimeError(
                        f"JIT build of natscale op {self.name} failed ({self._error}); "
                        f"rerun with verbose=True or see {self.jit_build_dir()}"
                    ) from exc
            self._module = module
            self._error = None
            return module

    def description(self) -> str:
        """What the build notice calls this op."""
        return f"natscale's {self.label} segment-loss op"

    def build_inputs(self) -> list[Path]:
        """Sources and headers: what a JIT build compares with the cached library."""
        files = [Path(src) for src in self.sources()]
        for folder in map(Path, self.include_dirs()):
            files += sorted(folder.glob("*.h")) + sorted(folder.glob("*.cuh"))
        return files

    def _jit_load(self, verbose: bool) -> ModuleType:
        import time

        from torch.utils.cpp_extension import load

        from natscale.ops.first_build import announce_build, announce_done, needs_build

        build_dir = self.jit_build_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        building = needs_build(build_dir, self.name, self.build_inputs())
        if building:
            announce_build(self.description(), self.name, build_dir)
        start = time.perf_counter()
        with _arch_list_env(), build_lock(build_dir):
            module = load(
                name=self.name,
                sources=self.sources(),
                extra_include_paths=self.include_dirs(),
                extra_cflags=self.cxx_flags(),
                extra_cuda_cflags=self.nvcc_flags(),
                with_cuda=self.with_cuda,
                build_directory=str(build_dir),
                verbose=verbose,
            )
        if building:
            announce_done(self.name, time.perf_counter() - start)
        return module

    def extension(self) -> Any:
        """A setuptools Extension for the prebuilt build (paths relative to setup.py's folder)."""
        from torch.utils.cpp_extension import CppExtension, CUDAExtension

        root = self.source_root()
        assert root is not None, "setup.py runs from the source tree"
        top = root.parents[1]  # natscale/csrc -> the folder holding the natscale package
        rel = [os.path.relpath(src, top) for src in self.sources()]
        includes = [os.path.relpath(d, top) for d in self.include_dirs()]
        if self.with_cuda:
            return CUDAExtension(
                self.prebuilt_name,
                rel,
                include_dirs=includes,
                extra_compile_args={"cxx": self.cxx_flags(), "nvcc": self.nvcc_flags()},
            )
        return CppExtension(
            self.prebuilt_name, rel, include_dirs=includes, extra_compile_args=self.cxx_flags()
        )


class SegmentCECPUBuilder(OpBuilder):
    """The segment loss, CPU only (C++; rows in parallel through ATen's OpenMP pool)."""

    name = "natscale_segment_ce_cpu"
    prebuilt_name = "natscale.ops._segment_ce_cpu"
    label = "cpu"

    def source_names(self) -> list[str]:
        return ["segment_ce/segment_ce_api.cpp", "segment_ce/segment_ce_cpu.cpp"]


class SegmentCECUDABuilder(OpBuilder):
    """The segment loss for CUDA tensors (also serves CPU tensors)."""

    name = "natscale_segment_ce_cuda"
    prebuilt_name = "natscale.ops._segment_ce_cuda"
    label = "cuda"
    with_cuda = True

    def source_names(self) -> list[str]:
        return [
            "segment_ce/segment_ce_api.cpp",
            "segment_ce/segment_ce_cpu.cpp",
            "segment_ce/segment_ce_cuda.cpp",
            "segment_ce/segment_ce_kernels.cu",
        ]

    def cxx_flags(self) -> list[str]:
        return [*super().cxx_flags(), "-DNATSCALE_WITH_CUDA"]

    def nvcc_flags(self) -> list[str]:
        threads = os.environ.get("NATSCALE_NVCC_THREADS", "4")
        return ["-O3", "-DNATSCALE_WITH_CUDA", "-lineinfo", "--threads", threads]

    def compatible(self) -> tuple[bool, str]:
        import torch

        if torch.version.cuda is None:
            return (
                False,
                f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)",
            )
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None:
            return False, "CUDA toolkit (nvcc) not found; set CUDA_HOME"
        if not (Path(CUDA_HOME) / "include" / "cuda_runtime.h").is_file():
            # torch guesses CUDA_HOME from `which nvcc`: a wrapper in /usr/local/bin gives /usr/local
            return (
                False,
                f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h; set CUDA_HOME to the "
                "toolkit's root (e.g. /usr/local/cuda)",
            )
        ok, reason = super().compatible()
        if not ok:
            return ok, reason
        if not torch.cuda.is_available():
            return True, f"buildable with {CUDA_HOME} (no GPU visible: set NATSCALE_CUDA_ARCH_LIST)"
        return True, f"JIT-buildable with nvcc from {CUDA_HOME}"


@contextlib.contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``build_dir`` for a JIT build, and clear a stale torch lock.

    torch's cpp_extension guards a build with a ``lock`` file that only the builder removes: a
    build killed mid-way (a timeout, an OOM kill) leaves it, and every later load waits on it for
    ever. Every natscale load takes this flock first, and the kernel drops a flock when its holder
    dies; so whoever holds it knows a ``lock`` file there is left over from a dead build.
    """
    with open(build_dir / "natscale.flock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # waits only for a live build
        try:
            leftover = build_dir / "lock"
            if leftover.exists():
                print(
                    f"natscale: removing {leftover}, left by a build that did not finish",
                    file=sys.stderr,
                )
                leftover.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _arch_list_env() -> Iterator[None]:
    """Expose ``NATSCALE_CUDA_ARCH_LIST`` as ``TORCH_CUDA_ARCH_LIST`` for the build only."""
    arch = os.environ.get("NATSCALE_CUDA_ARCH_LIST")
    if not arch:
        yield
        return
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old


SEGMENT_CE_CPU = SegmentCECPUBuilder()
SEGMENT_CE_CUDA = SegmentCECUDABuilder()


def ext_modules_and_cmdclass() -> tuple[list[Any], dict[str, Any]]:
    """Extensions for ``NATSCALE_BUILD_OPS=1`` (called by setup.py): CPU always, CUDA when possible.

    ``NATSCALE_CUDA_ARCH_LIST`` defaults to ``9.0`` here (no GPU needs to be visible at build time).
    """
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension

    modules = [SEGMENT_CE_CPU.extension()]
    if torch.version.cuda is not None and CUDA_HOME is not None:
        os.environ.setdefault(
            "TORCH_CUDA_ARCH_LIST", os.environ.get("NATSCALE_CUDA_ARCH_LIST", "9.0")
        )
        modules.append(SEGMENT_CE_CUDA.extension())
    else:
        print(
            "natscale: building the CPU segment-loss extension only "
            f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})",
            file=sys.stderr,
        )
    return modules, {"build_ext": BuildExtension}
