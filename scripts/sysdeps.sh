#!/usr/bin/env bash
# System packages the multi-process tests and launchers need: Open MPI (mpirun + headers for mpi4py),
# numactl (deepspeed --bind_cores_to_rank), ninja (JIT builds), iproute2 (network-namespace tests).
# Installs only what is missing, and only as root; otherwise says what to install.
set -euo pipefail
need=()
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin libopenmpi-dev)
command -v numactl >/dev/null 2>&1 || need+=(numactl)
command -v ninja >/dev/null 2>&1 || need+=(ninja-build)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "sysdeps: installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "sysdeps: missing ${need[*]} (install them with your package manager; MPI tests will be skipped)" >&2
fi
