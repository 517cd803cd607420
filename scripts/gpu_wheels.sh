#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the Python packages the lent GPU machine lacks: it has PyTorch
# 2.11.0+cu130, Triton, accelerate, pyarrow and tokenizers, but no network and no deepspeed,
# datasets, pydantic or liger-kernel. Versions are the ones this checkout's venv was tested with
# (Python 3.12 wheels, the GPU machine's Python). benchmarks/gpu_session.sh installs them there;
# scripts/gpu_prep.sh runs this as part of the one-call kit's preparation.
#   bash scripts/gpu_wheels.sh                 # then carry ".whl" with the device tool
#   bash scripts/gpu_wheels.sh --prebuilt-ops  # DeepSpeed with FusedAdam + CPUAdam compiled here
# --prebuilt-ops builds DeepSpeed's two Adam ops against the GPU machine's torch in a Python 3.12
# venv (.cache/gpu-py312, about 3 GB: torch and its CUDA wheels), for sm_90, with this machine's
# nvcc (CUDA_HOME, default /usr/local/cuda; 13.0 like torch's). The GPU machine then skips their
# JIT builds (a minute or two of device time per fresh machine), and a compile error shows here.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
gpu_torch=${GPU_TORCH:-2.11.0}
prebuilt=0
[[ ${1:-} == --prebuilt-ops ]] && prebuilt=1
rm -rf .whl && mkdir .whl

# the versions installed here, so the GPU run uses what CI tested: those the GPU machine has at
# another version (pinned below), and everything natscale needs (its install requirements and
# theirs, for Python 3.12) that the machine lacks (scripts/gpu_machine_packages.txt). The bounds
# this set puts on the machine's own packages go to .whl/machine-requirements.txt, which
# benchmarks/gpu_session.sh checks there first.
pins=$("$py" - <<'PY'
import re
from importlib.metadata import PackageNotFoundError, distribution, version

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

on_gpu = set()
for line in open("scripts/gpu_machine_packages.txt", encoding="utf-8"):
    if line.strip() and not line.startswith("#"):
        on_gpu.add(canonicalize_name(line.strip()))
pinned = ["hjson", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
          "datasets", "dill", "multiprocess", "xxhash", "fsspec", "transformers",
          "huggingface_hub", "tokenizers"]
# torch and its CUDA wheels are the machine's; DeepSpeed's wheel is built separately
skip = {"torch", "triton", "deepspeed", "natscale"}
env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3", "extra": ""}
carry = {canonicalize_name(n): n for n in pinned}
bounds, missing, seen, todo = [], [], set(), ["natscale", "deepspeed", *pinned]
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    seen.add(name)
    try:
        requires = distribution(name).requires or []
    except PackageNotFoundError:
        missing.append(name)
        continue
    for text in requires:
        req = Requirement(text)
        dep = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if dep in skip or dep.startswith("nvidia-"):
            continue
        if dep in on_gpu and dep not in carry:
            if str(req.specifier):
                bounds.append(f"{dep}{req.specifier}  # {name}")
            continue
        carry.setdefault(dep, dep)
        todo.append(dep)
if missing:
    raise SystemExit(f"gpu_wheels: not installed here, so no tested version: {sorted(missing)}")
with open(".whl/machine-requirements.txt", "w", encoding="utf-8") as out:
    out.write("".join(f"{b}\n" for b in sorted(set(bounds))))
print(" ".join(f"{n}=={version(n)}" for n in sorted(carry.values())))
PY
)
# the kernel benchmark's third comparison (not a dependency of natscale, so pinned here)
pins="$pins liger-kernel==0.8.5"
ds=$("$py" -c "from importlib.metadata import version; print(version('deepspeed'))")

if ((prebuilt)); then
  source scripts/python312.sh
  gpy=$py312
  venv=.cache/gpu-py312
  if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$gpu_torch')" 2>/dev/null; then
    rm -rf "$venv"
    "$gpy" -m venv "$venv"
    "$venv/bin/pip" install -q "torch==$gpu_torch" ninja numpy packaging psutil py-cpuinfo hjson \
      msgpack pydantic tqdm setuptools wheel
  fi
  # the toolkit may lack the cuBLAS/cuSPARSE headers torch's CUDA headers include: use the wheels'
  nv=$("$venv/bin/python" -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', 'include'))")
  DS_ACCELERATOR=cuda CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 \
    DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 CPATH="$nv" \
    NVCC_APPEND_FLAGS="-I$nv" MAX_JOBS=${MAX_JOBS:-2} \
    "$venv/bin/pip" wheel -q --no-cache-dir --no-deps --no-build-isolation -w .whl "deepspeed==$ds"
  "$venv/bin/python" -c "import glob, sys, zipfile
names = zipfile.ZipFile(glob.glob('.whl/deepspeed-*.whl')[0]).namelist()
sys.exit(not all(any(op in n for n in names) for op in ('fused_adam_op', 'cpu_adam_op')))" ||
    { echo "gpu_wheels: the DeepSpeed wheel lacks its prebuilt Adam ops" >&2; exit 1; }
else
  # DeepSpeed ships as source only: build its pure-Python wheel here (its ops JIT-build there)
  DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$ds"
fi

plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
# shellcheck disable=SC2086  # $pins is a list of requirements
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d .whl $pins
echo "gpu_wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry \".whl\")"
