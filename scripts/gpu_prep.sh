#!/usr/bin/env bash
# CPU-side preparation of the one-call GPU check (benchmarks/gpu_session.sh), on a machine with
# network and nvcc: everything the GPU machine would otherwise spend device time on.
#   bash scripts/gpu_prep.sh            # venv + wheels + prebuilt op (~5-15 min the first time)
#   bash scripts/gpu_prep.sh --ops      # only rebuild the op (after a change under natscale/csrc/)
# 1. .cache/gpu-py312: a Python 3.12 venv with the GPU machine's torch (2.11.0, CUDA 13.0 wheels)
#    and the packages that machine has (pytest, accelerate, ...): the build environment of step 3
#    and the stand-in of that machine for the rehearsal (GPU_REHEARSAL=1, docs/benchmarks.md).
# 2. .whl/: what that machine lacks (DeepSpeed without prebuilt ops, datasets, pydantic, this
#    checkout's transformers, liger-kernel) via scripts/gpu_wheels.sh.
# 3. natscale/ops/_segment_ce_{cpu,cuda}.cpython-312-x86_64-linux-gnu.so: the segment loss built
#    for that machine (torch 2.11.0+cu130, sm_90 machine code + PTX) and stripped, each carrying
#    the hash of its sources (a stale one is refused there, with the rebuild command).
# Trap: /usr/local/bin/nvcc may be a wrapper script, from which torch guesses CUDA_HOME=/usr/local
# (no headers there): CUDA_HOME must name the toolkit, /usr/local/cuda by default.
# The device call then carries ".whl" (and the two .so files, which git ignores):
#   carry: [".whl", "natscale/ops/_segment_ce_cuda.cpython-312-x86_64-linux-gnu.so",
#           "natscale/ops/_segment_ce_cpu.cpython-312-x86_64-linux-gnu.so"]
set -euo pipefail
cd "$(dirname "$0")/.."
gpu_torch=${GPU_TORCH:-2.11.0}
venv=.cache/gpu-py312
source scripts/python312.sh
ops_only=0
[[ ${1:-} == --ops ]] && ops_only=1

if ! "$venv/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$gpu_torch')" 2>/dev/null; then
  rm -rf "$venv"
  "$py312" -m venv "$venv"
  # the GPU machine's set (see the device notes), minus what .whl/ brings
  "$venv/bin/pip" install -q "torch==$gpu_torch" ninja numpy packaging pytest pytest-timeout \
    pyyaml setuptools wheel accelerate safetensors tqdm psutil py-cpuinfo msgpack sentencepiece \
    matplotlib tensorboard pyarrow pandas requests httpx regex einops typer shellingham hf-xet
fi

if ((!ops_only)); then
  # the pins come from the tested venv (`make install`'s .venv, or PYTHON=...)
  bash scripts/gpu_wheels.sh
fi

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
[[ -f $CUDA_HOME/include/cuda_runtime.h ]] ||
  { echo "gpu_prep: CUDA_HOME=$CUDA_HOME has no include/cuda_runtime.h; set CUDA_HOME" >&2; exit 2; }
# the toolkit may lack the cuBLAS/cuSPARSE headers torch's CUDA headers include: the wheels' have them
nv=$("$venv/bin/python" -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', 'include'))")
rm -f natscale/ops/_segment_ce_*.cpython-312-*.so
# sm_90 machine code, plus PTX for anything newer
NATSCALE_BUILD_OPS=1 NATSCALE_CUDA_ARCH_LIST="9.0+PTX" TORCH_CUDA_ARCH_LIST="9.0+PTX" \
  CPATH="$nv" NVCC_APPEND_FLAGS="-I$nv" MAX_JOBS=${MAX_JOBS:-2} PATH="$CUDA_HOME/bin:$PATH" \
  "$venv/bin/python" setup.py -q build_ext --inplace --build-temp .cache/gpu-build
strip --strip-debug natscale/ops/_segment_ce_*.cpython-312-*.so
# both import (the CUDA one needs no GPU to load) and carry the hash of today's sources
"$venv/bin/python" - <<'PY'
from natscale.ops.builder import SEGMENT_CE_CPU, SEGMENT_CE_CUDA

for b in (SEGMENT_CE_CPU, SEGMENT_CE_CUDA):
    m = b.load()
    assert m.__name__ == b.prebuilt_name, (m.__name__, "not the prebuilt module")
    print(f"gpu_prep: {m.__file__} sources_hash={m.sources_hash} with_cuda={m.with_cuda}")
PY
ls -la natscale/ops/_segment_ce_*.cpython-312-*.so
du -shc .whl natscale/ops/_segment_ce_*.cpython-312-*.so 2>/dev/null | tail -1 |
  sed 's/^/gpu_prep: carried in all (limit 64 MiB with the working tree): /'
