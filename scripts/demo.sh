#!/usr/bin/env bash
# The demo job on the embedded default: CPU, 2 ranks.
set -euo pipefail
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
natscale env
