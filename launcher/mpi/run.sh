#!/usr/bin/env bash
# natscale under plain mpirun (Open MPI): mpirun starts every rank, and natscale maps Open MPI's
# rank variables (OMPI_COMM_WORLD_RANK/_SIZE/_LOCAL_RANK -> RANK/WORLD_SIZE/LOCAL_RANK).
#   launcher/mpi/run.sh HOSTFILE CONFIG [--set KEY=VALUE ...] [--resume]
#   e.g. IFNAME=eth1 launcher/mpi/run.sh hosts run.yaml --set train.lr=2e-5
# HOSTFILE: "HOST slots=N" lines (launcher/hostfile.example; Open MPI reads the same format).
# Environment: MASTER_ADDR (default: the first host of HOSTFILE), MASTER_PORT (default 29500),
# IFNAME (the interface between the nodes: mpirun's TCP, GLOO_/NCCL_SOCKET_IFNAME), NP (ranks;
# default the sum of slots), MPIRUN_ARGS (more mpirun options), NATSCALE_COMMAND (default
# "train"; "selftest" checks the setup), PYTHON (default: python3 on PATH, at the same path on
# every node). The variables every rank needs (NCCL_*, GLOO_*, HF_*, TORCH_*, PATH, PYTHONPATH,
# ...) are passed with -x.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
hostfile=$1
shift
[ -r "$hostfile" ] || { echo "run.sh: cannot read hostfile $hostfile" >&2; exit 2; }
hosts=$(sed -e 's/#.*//' "$hostfile" | awk 'NF')
first_host=$(awk 'NR == 1 {print $1}' <<<"$hosts")
slots=$(awk '{for (i = 2; i <= NF; i++) if ($i ~ /^slots=[0-9]+$/) {sub("slots=", "", $i); n += $i}} END {print n + 0}' <<<"$hosts")
[ -n "$first_host" ] && [ "$slots" -gt 0 ] || { echo "run.sh: $hostfile lists no 'HOST slots=N' line" >&2; exit 2; }

export MASTER_ADDR=${MASTER_ADDR:-$first_host}
export MASTER_PORT=${MASTER_PORT:-29500}
python=${PYTHON:-$(command -v python3)}
if ! "$python" -c 'import natscale' 2>/dev/null; then  # not installed: use this checkout
  PYTHONPATH=$(cd "$(dirname "$0")/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}
  export PYTHONPATH
fi
args=(-np "${NP:-$slots}" --hostfile "$hostfile" --bind-to none)
[ "$(id -u)" = 0 ] && args+=(--allow-run-as-root)
if [ -n "${IFNAME:-}" ]; then
  export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$IFNAME} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$IFNAME}
  args+=(--mca btl_tcp_if_include "$IFNAME" --mca oob_tcp_if_include "$IFNAME")
fi
for name in $(compgen -e); do
  case $name in
    NCCL_* | GLOO_* | HF_* | TORCH_* | TRANSFORMERS_* | NATSCALE_* | DS_ACCELERATOR | OMP_NUM_THREADS | \
      TOKENIZERS_PARALLELISM | CUDA_HOME | LD_LIBRARY_PATH | VIRTUAL_ENV | PATH | PYTHONPATH | MASTER_ADDR | MASTER_PORT)
      args+=(-x "$name") ;;
  esac
done
read -r -a extra <<<"${MPIRUN_ARGS:-}"
set -x
exec mpirun "${args[@]}" "${extra[@]}" "$python" -u -m natscale.cli "${NATSCALE_COMMAND:-train}" "$@"
