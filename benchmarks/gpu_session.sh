#!/usr/bin/env bash
# The GPU measurements of issues 4 and 8 (one H100/H200), in stages that each end on their own
# within GPU_STAGE_S (default 540 s: a lent machine's 10-minute call; every step gets what is left
# of it, and the archive is written even when a step fails or runs out of time):
#   bash benchmarks/gpu_session.sh ops      # issue 4: CUDA op tests + the kernel benchmark grid
#   bash benchmarks/gpu_session.sh tp       # issue 8: 3B MFU (no recompute), 3B vs the baseline
#   bash benchmarks/gpu_session.sh tp8b     # issue 8: 8B with optimizer offload vs the baseline
#   bash benchmarks/gpu_session.sh tp1b     # issue 8: 1B vs the baseline
#   bash benchmarks/gpu_session.sh sweeps   # issue 8: 3B over ZeRO stage and loss
#   bash benchmarks/gpu_session.sh sweeps2  # issue 8: 3B over micro-batch rows and attention
# (in order of priority: about 5-8 minutes each on a warm machine)
# Targets: the kernel within 1.15x of the matmul floor at T=16384, H=4096, V=128256 (<= 0.6x at
# half trained, <= 4.5 GB); MFU >= 45% for 3B at 4096 packed and >= 2x the baseline's trained tok/s.
# On a machine with natscale installed, just run a stage. For a GPU machine without network: run
# `bash scripts/gpu_wheels.sh` on a connected one (add --prebuilt-ops to ship DeepSpeed's FusedAdam
# and CPUAdam compiled for the GPU machine's torch, saving their JIT builds there) and bring
# ".whl" along: they are installed into /tmp/site. Logs and new benchmarks/results/ files are packed
# into $OUT/gpu_<stage>.tar.gz (OUT defaults to /tmp/gpu_out); unpack them and commit the results.
set -uo pipefail
stages="ops tp tp8b tp1b sweeps sweeps2"
stage=${1:-}
if [[ " $stages " != *" $stage "* ]]; then
  echo "usage: gpu_session.sh ${stages// /|}" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_out}
deadline=$(($(date +%s) + ${GPU_STAGE_S:-540}))
logs=/tmp/gpu_logs/$stage
rm -rf "$logs" && mkdir -p "$out" "$logs" /tmp/bin
if compgen -G ".whl/*.whl" >/dev/null; then # else: natscale's dependencies are installed here
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions TORCH_CUDA_ARCH_LIST=9.0
# torch guesses CUDA_HOME from `which nvcc` (a wrapper script there would give /usr/local)
if [[ -z ${CUDA_HOME:-} && -f /usr/local/cuda/include/cuda_runtime.h ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
printf '#!/bin/sh\nexec python3 -m natscale.cli "$@"\n' >/tmp/bin/natscale
chmod +x /tmp/bin/natscale && export PATH=/tmp/bin:/tmp/site/bin:$PATH
touch "$logs/.start"
{ nvidia-smi; free -g; python3 -m natscale.cli env; } >"$logs/env.txt" 2>&1

failed=0
run() { # run NAME CMD...: log to $logs/NAME.log within the stage's time left; keep going
  local name=$1 left code
  shift
  left=$((deadline - $(date +%s) - 15))
  if ((left < 30)); then
    echo "== $name: skipped, the stage's time is spent" | tee "$logs/$name.log"
    failed=1
    return 124
  fi
  echo "== $name (${left}s left): $*"
  # timeout signals the whole process group: training ranks started by the bench go too
  timeout -k 10 "$left" "$@" >"$logs/$name.log" 2>&1
  code=$?
  echo "== $name: exit $code"
  tail -n 25 "$logs/$name.log"
  ((code == 0)) || failed=1
  return $code
}

# 4 micro-batches of 4096 tokens per optimizer step: Adam's pass over 16 B/param of state costs
# about a quarter of a 4096-token 3B step on its own, so one micro-batch per step would measure
# the optimizer more than the model
# results into the tracked tables (bench's default is runs/bench/results); one pair of runs per
# setup (--repeats 1): a dedicated GPU is quiet, and each stage must end within GPU_STAGE_S
tp=(natscale bench throughput --data gsm8k --seq-len 4096 --grad-accum 4 --warmup 2 --steps 6
  --device cuda --results benchmarks/results --repeats 1)
sweep=(natscale bench sweep --model llama-3.2-3b --data gsm8k --seq-len 4096 --grad-accum 4
  --warmup 2 --steps 5 --device cuda --no-baseline --no-ac --results benchmarks/results)
# the CUDA loss op, built once per machine (a no-op when the JIT cache is current), so its build
# neither fails silently inside a training run nor lands in a measured step
[[ $stage == ops ]] ||
  run build_ops python3 -c "from natscale.ops.builder import SEGMENT_CE_CUDA as b; print(b.load())"
case $stage in
  ops)
    run gpu_tests python3 -m pytest -m gpu tests/ops tests/model -q -p no:cacheprovider
    # the target shape first; one results file per token count, so a slow torch.compile
    # cannot cost both
    for t in 16384 4096; do
      run "bench_kernel_$t" python3 benchmarks/kernels/bench_segment_ce.py --device cuda \
        --tokens "$t" --hidden 4096 --vocab 128256 151936 --fractions 1.0 0.5 --dtype bfloat16
    done
    ;;
  tp)
    # MFU target: natscale alone without recompute (model + Adam state are 16 B/param, 51 GB;
    # activation checkpointing is the fallback where the rest does not fit)
    run tp_3b_mfu "${tp[@]}" --model llama-3.2-3b --no-ac --no-baseline ||
      run tp_3b_mfu_ac "${tp[@]}" --model llama-3.2-3b --no-baseline
    # the ratio: both sides with activation checkpointing, since the baseline's padded
    # micro-batches hold ~3x the tokens of a packed row and would not fit an 80 GB GPU without it
    run tp_3b "${tp[@]}" --model llama-3.2-3b
    ;;
  tp1b)
    run tp_1b "${tp[@]}" --model llama-3.2-1b --no-ac ||
      run tp_1b_ac "${tp[@]}" --model llama-3.2-1b
    ;;
  tp8b)
    # ZeRO-3 optimizer offload keeps fp32 weights, Adam moments and fp32 gradients in host
    # memory: 16 B x 8.03e9 = 128 GB, more than the 128 GiB machine can pin beside everything
    # else. Then DeepSpeed's partial offload (offload_optimizer.ratio) keeps the rest of the
    # optimizer on the GPU (bf16 weights + grads there: 32 GB); 3B with full offload is the
    # fallback if that fails too.
    host_gb=$(awk '/MemTotal/ {printf "%d", $2 * 1024 / 1e9}' /proc/meminfo)
    ratio=$(python3 -c "print(min(1.0, int(($host_gb - 24) / 128 * 20) / 20))")
    echo "tp8b: host ${host_gb} GB -> offload ratio ${ratio}" | tee "$logs/tp8b_memory.txt"
    set8b=()
    [[ $ratio == 1.0 ]] ||
      set8b=(--set "deepspeed.overrides.zero_optimization.offload_optimizer.ratio=$ratio"
        --set "deepspeed.overrides.zero_optimization.sub_group_size=100000000")
    # host Adam over 8B parameters takes seconds per step: fewer steps (the last flag wins)
    run tp_8b_offload "${tp[@]}" --model llama-3-8b --offload optimizer "${set8b[@]}" \
      --warmup 2 --steps 4 ||
      run tp_3b_offload "${tp[@]}" --model llama-3.2-3b --offload optimizer
    ;;
  sweeps)
    run sweep_zero "${sweep[@]}" --param zero_stage=2,3
    run sweep_loss "${sweep[@]}" --param loss=fused,logits
    ;;
  sweeps2)
    run sweep_mb "${sweep[@]}" --param micro_batch_rows=1,2
    run sweep_attn "${sweep[@]}" --param attn=auto,sdpa
    ;;
esac
# new result files (newer than this stage's start) and every log, in one archive
find benchmarks/results -type f -newer "$logs/.start" >"$logs/new_results.txt"
tar czf "$out/gpu_$stage.tar.gz" -C /tmp/gpu_logs "$stage" -C "$PWD" -T "$logs/new_results.txt"
echo "gpu_session $stage: exit-status $failed; logs and $(wc -l <"$logs/new_results.txt")" \
  "result files in $out/gpu_$stage.tar.gz"
exit $failed
