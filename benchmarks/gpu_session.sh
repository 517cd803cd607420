#!/usr/bin/env bash
# What a session with the lent GPU runs there, one stage per device call (each under 10 min):
#   bash benchmarks/gpu_session.sh ops          # issue 4: CUDA op tests + kernel benchmark
#   bash benchmarks/gpu_session.sh throughput   # issue 8: 1B/3B/8B vs the baseline (gpu_suite.sh)
# Before: `bash scripts/gpu_wheels.sh` here, and carry ".whl" (the GPU machine has no network and
# no deepspeed, datasets or pydantic). Logs and benchmarks/results/ files come back in
# $OUT/gpu_<stage>.tar.gz; unpack them here and commit the results.
set -uo pipefail
stage=${1:?usage: gpu_session.sh ops|throughput}
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out" /tmp/gpu_logs /tmp/bin
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions TORCH_CUDA_ARCH_LIST=9.0
printf '#!/bin/sh\nexec python3 -m natscale.cli "$@"\n' >/tmp/bin/natscale
chmod +x /tmp/bin/natscale && export PATH=/tmp/bin:$PATH
touch /tmp/gpu_logs/.start
{ nvidia-smi; python3 -m natscale.cli env; } >/tmp/gpu_logs/env.txt 2>&1

run() {  # run NAME CMD...: log to /tmp/gpu_logs/NAME.log, keep going on failure
  local name=$1; shift
  echo "== $name: $*"
  "$@" >"/tmp/gpu_logs/$name.log" 2>&1
  echo "== $name: exit $?"; tail -n 25 "/tmp/gpu_logs/$name.log"
}
case $stage in
  ops)
    run gpu_tests python3 -m pytest -m gpu tests/ops -q -p no:cacheprovider
    run bench_kernel python3 benchmarks/kernels/bench_segment_ce.py --device cuda \
      --tokens 4096 16384 --hidden 4096 --vocab 128256 151936 --fractions 1.0 0.5 \
      --dtype bfloat16
    ;;
  throughput)
    run gpu_suite bash benchmarks/throughput/gpu_suite.sh
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
# new result files (newer than this run's start) and every log, in one archive
find benchmarks/results -type f -newer /tmp/gpu_logs/.start >/tmp/gpu_logs/new_results.txt
tar czf "$out/gpu_$stage.tar.gz" -C /tmp gpu_logs -C "$PWD" -T /tmp/gpu_logs/new_results.txt
echo "gpu_session $stage: logs and $(wc -l </tmp/gpu_logs/new_results.txt) result files in $out/gpu_$stage.tar.gz"
