#!/usr/bin/env bash
# The one-call GPU check: ONE command on a lent H100/H200 (15 minutes of device time per loan,
# the machine's start included; one command at most 10) that answers, most important first:
#   step    what                                                                typ    cap (s)
#   build   import the prebuilt CUDA + CPU op (a stale one is set aside: JIT)     3     150
#   check   benchmarks/gpu_check_op.py: forward + backward vs an fp32 reference  100     130
#           at T=16384 H=4096 V=128256 (all / half trained), > 2^31 logits in
#           a chunk, V=151936 odd T, the scalar path, all untrained, T=0, bf16 /
#           fp32 (fp16 refused), backward scale 0.37, NaN-poisoned memory; then
#           determinism, API, torch.compile, op ms vs the 3-GEMM floor + peak MB,
#           torch.compile'd chunked CE as a peer
#   tests   pytest -m gpu tests/ops (CUDA vs the fp64 oracle, no host sync)        80     100
#   e2e     natscale bench throughput llama-3.2-1b, 4096 packed vs unpacked +     170     230
#           MFU, forced to the CUDA op (NATSCALE_SEGMENT_CE_IMPL=cuda) and torch
#           AdamW (no DeepSpeed op is JIT-built on the device)
#   kbench  bench_segment_ce.py T=16384 V=128256: natscale, torch, torch.compile,  90    rest
#           torch.compile'd chunked CE, liger (bf16 and fp32 dW accumulation)
# Each step runs under `timeout` with min(cap, what is left of GPU_BUDGET_S (510) - 15 s); a step
# that runs over is killed with its process group and the next one starts. Everything lands in
# $OUT while it runs (a kill keeps it), at most 8 files: summary.txt (versions, natscale env,
# per-step exit codes and times, the headline lines), check_op.json, build.log, check.log,
# tests.log, e2e.log, kbench.log, results.tgz (bench JSON/MD, the e2e record, summary.json +
# metrics.jsonl + node0.log of both training runs).
#
# Prepare on the CPU machine first: `bash scripts/gpu_prep.sh` (wheels in .whl/, the op prebuilt
# for the GPU machine's Python 3.12 / torch 2.11.0+cu130 / sm_90, stripped). Then one device call:
#   command: bash benchmarks/gpu_session.sh     timeout_s: 570
#   carry:   .whl, natscale/ops/_segment_ce_cuda.cpython-312-x86_64-linux-gnu.so,
#            natscale/ops/_segment_ce_cpu.cpython-312-x86_64-linux-gnu.so
# A warm machine can rerun a subset: `STEPS="e2e" GPU_BUDGET_S=240 bash benchmarks/gpu_session.sh`;
# STEPS="e2e3b" (not in the default set) measures the 3B preset's MFU in a call of its own.
# Rehearsal without a GPU (docs/benchmarks.md): GPU_REHEARSAL=1 runs every step; a CUDA step says
# "skipped: no CUDA" and runs a small CPU stand-in of itself in the same time box instead.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${GPU_BUDGET_S:-510}
O=${OUT:-/tmp/gpu_out}
W=${GPU_WORK:-/tmp/natscale_gpu} # scratch: installed wheels, JIT cache, training runs
R=$W/q/results
rm -rf "$W/q" "$W/bench"
mkdir -p "$O" "$R" "$W/bin"
S="$O/summary.txt"
: >"$S"
failed=0
left() { echo $((BUDGET - ($(date +%s) - T0))); }
wanted() { [[ " ${STEPS:-build check tests e2e kbench} " == *" $1 "* ]]; }
step() { # step NAME CAP CMD...: CMD's output to $O/NAME.log, within the time left
  local name=$1 cap=$2 lim s rc
  shift 2
  lim=$(($(left) - 15))
  ((lim > cap)) && lim=$cap
  if ((lim < 20)); then
    echo "== $name: skipped, $(left)s left" | tee -a "$S"
    failed=1
    return 124
  fi
  echo "== $name (limit ${lim}s): $*" | tee -a "$S"
  # steps run one at a time and a killed step's processes are gone: a torch JIT `lock` left in
  # the cache now is from a build killed mid-way (DeepSpeed's ops too), and would hang every load
  find "$TORCH_EXTENSIONS_DIR" -name lock -type f -print -delete 2>/dev/null |
    sed 's/^/stale lock removed: /' | tee -a "$S"
  s=$(date +%s)
  # timeout signals its whole process group: training ranks started by the bench go too
  timeout -k 5 "$lim" "$@" >>"$O/$name.log" 2>&1
  rc=$?
  ((rc == 124 || rc == 137)) && echo "== $name: killed at its limit (${lim}s)" | tee -a "$S"
  echo "== $name: exit $rc after $(($(date +%s) - s))s" | tee -a "$S"
  tail -n 12 "$O/$name.log"
  ((rc == 0)) || failed=1
  return $rc
}
finish() {
  local side d=$W/bench/throughput
  for side in natscale baseline; do
    [[ -d $d/$side ]] || continue
    mkdir -p "$W/q/train/$side"
    cp -f "$d/$side"/{summary.json,metrics.jsonl,config.yaml} "$W/q/train/$side/" 2>/dev/null
    cp -f "$d/${side}_logs/node0.log" "$W/q/train/$side/" 2>/dev/null
  done
  {
    grep -hE "^(PASS|FAIL)|gpu_check_op:" "$O/check.log" | cut -c1-240
    tail -n 3 "$O/tests.log"
    grep -hE "^ *(16384|512) |bench_segment_ce:" "$O/kbench.log"
    grep -hE "ratio|MFU|natscale bench|error" "$O/e2e.log" | tail -n 6
  } >>"$S" 2>/dev/null
  tar czf "$O/results.tgz.tmp" -C "$W" q && mv -f "$O/results.tgz.tmp" "$O/results.tgz"
  echo "gpu_session: total $(($(date +%s) - T0))s, exit $failed" | tee -a "$S"
}
trap finish EXIT

if compgen -G ".whl/*.whl" >/dev/null; then # the GPU machine has no network: carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$W/site" .whl/*.whl >"$W/pip.log" 2>&1 || {
    echo "wheel install failed: $(tail -n 3 "$W/pip.log")" | tee -a "$S"
    exit 1
  }
fi
export PYTHONPATH=$W/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ -f .whl/machine-requirements.txt ]]; then # bounds the carried wheels put on this machine's own
  python3 - .whl/machine-requirements.txt <<'PY' 2>&1 | tee -a "$S"
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    text, _, who = line.partition("#")
    if not text.strip():
        continue
    req = Requirement(text)
    try:
        have = version(req.name)
    except PackageNotFoundError:
        have = None
    if have is None or not req.specifier.contains(have, prereleases=True):
        bad.append(f"{req} (for {who.strip()}): this machine has {have or 'none'}")
print("gpu_session: machine packages " + ("OK" if not bad else "UNMET: " + "; ".join(bad)))
PY
fi
export TORCH_EXTENSIONS_DIR=$W/te TORCH_CUDA_ARCH_LIST=9.0 NATSCALE_CACHE=$W/cache
# torch guesses CUDA_HOME from `which nvcc`: a wrapper script in /usr/local/bin gives /usr/local
if [[ -z ${CUDA_HOME:-} && -f /usr/local/cuda/include/cuda_runtime.h ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
printf '#!/bin/sh\nexec python3 -m natscale.cli "$@"\n' >"$W/bin/natscale"
chmod +x "$W/bin/natscale" && export PATH=$W/bin:$W/site/bin:$PATH
cuda=0
python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null && cuda=1
rehearse=${GPU_REHEARSAL:-0}
{
  echo "gpu_session $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null)" \
    "cuda=$cuda rehearsal=$rehearse budget=${BUDGET}s CUDA_HOME=${CUDA_HOME:-unset} nproc=$(nproc)"
  command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  timeout 60 python3 -m natscale.cli env
} >>"$S" 2>&1
if ((!cuda && !rehearse)); then
  echo "gpu_session: no CUDA device; set GPU_REHEARSAL=1 to rehearse on CPU" | tee -a "$S"
  exit 1
fi
# no_cuda NAME: a CUDA step on a machine without one (rehearsal): say so, run its CPU stand-in
no_cuda() { echo "== $1: skipped: no CUDA (rehearsal: a CPU stand-in runs instead)" | tee -a "$S"; }

if wanted build; then
  dev=cpu
  ((cuda)) && dev=cuda
  # a stale prebuilt op (sources changed since gpu_prep.sh) is refused: set it aside, JIT-build
  step build 150 python3 - "$dev" <<'PY' || exit 1
import os, sys, time
from natscale.ops.builder import SEGMENT_CE_CPU, SEGMENT_CE_CUDA
builders = [SEGMENT_CE_CPU] + ([SEGMENT_CE_CUDA] if sys.argv[1] == "cuda" else [])
for b in builders:
    t0 = time.time()
    try:
        m = b.load()
    except RuntimeError as exc:
        print(f"build: {b.name}: {exc}", flush=True)
        pre = b.prebuilt()
        if pre is None or b.stale(pre) is None:
            raise
        os.replace(pre.__file__, pre.__file__ + ".stale")
        b.__init__()  # forget the refusal; load() now JIT-builds
        sys.modules.pop(b.prebuilt_name, None)
        m = b.load(verbose=True)
    print(f"build: {b.label}: {m.__file__} sources_hash={getattr(m, 'sources_hash', '?')} "
          f"with_cuda={m.with_cuda} ({time.time() - t0:.1f} s)", flush=True)
PY
  grep -h "^build: " "$O/build.log" >>"$S"
fi

if wanted check; then
  if ((cuda)); then
    step check 130 python3 benchmarks/gpu_check_op.py --out "$O/check_op.json"
  else
    no_cuda check
    step check 130 python3 benchmarks/gpu_check_op.py --device cpu --small --out "$O/check_op.json"
  fi
fi

if wanted tests; then
  ((cuda)) || no_cuda tests # the gpu tests then skip themselves ("needs a CUDA GPU")
  step tests 100 python3 -m pytest -m gpu tests/ops -q -p no:cacheprovider --timeout 60 -rfs
fi

# the natscale side must run the CUDA op (no fallback to the [T, V] reference); torch AdamW: no
# DeepSpeed op is JIT-built on the device (FusedAdam: 1-2 minutes, and cuBLAS headers)
e2e=(python3 -m natscale.cli bench throughput --data gsm8k --warmup 2 --repeats 1 --work-dir "$W/bench"
  --results "$R" --set deepspeed.overrides.optimizer.params.torch_adam=true)
if wanted e2e; then
  if ((cuda)); then
    NATSCALE_SEGMENT_CE_IMPL=cuda NATSCALE_HANG_DUMP_S=150 step e2e 230 "${e2e[@]}" \
      --model llama-3.2-1b --seq-len 4096 --grad-accum 4 --steps 4 --device cuda --no-ac \
      --timeout 160
  else
    no_cuda e2e
    NATSCALE_SEGMENT_CE_IMPL=cpu step e2e 230 "${e2e[@]}" --model tiny --seq-len 512 \
      --grad-accum 1 --steps 2 --device cpu --timeout 150
  fi
fi

if wanted kbench; then
  kb=(python3 benchmarks/kernels/bench_segment_ce.py --fractions 1.0 0.5 --warmup 1 --out-dir "$R")
  if ((cuda)); then
    step kbench 200 "${kb[@]}" --device cuda --tokens 16384 --hidden 4096 --vocab 128256 \
      --repeats 4
  else
    no_cuda kbench
    step kbench 200 "${kb[@]}" --device cpu --tokens 512 --hidden 64 --vocab 4000 --repeats 2 \
      --impls natscale torch torch.compile-chunked
  fi
fi
# opt-in, for a later loan (STEPS="e2e3b" GPU_BUDGET_S=520): the 3B preset's
# MFU without recompute, natscale alone (its Adam state alone is 51 GB)
if [[ " ${STEPS:-} " == *" e2e3b "* ]] && ((cuda)); then
  NATSCALE_SEGMENT_CE_IMPL=cuda step e2e3b 500 "${e2e[@]}" --model llama-3.2-3b --seq-len 4096 \
    --grad-accum 4 --steps 4 --device cuda --no-ac --no-baseline --timeout 480
fi
exit $failed
