#!/usr/bin/env bash
# The demo job on the embedded default: CPU, 2 ranks.
set -euo pipefail
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
natscale env
# Can this machine run ZeRO-3? 2 CPU ranks under the deepspeed launcher, launched the way users
# launch `natscale train`; a free loopback port so concurrent runs never collide.
port=$(python -c "from natscale.train.dist import free_port; print(free_port())")
deepspeed --num_accelerators 2 --master_addr 127.0.0.1 --master_port "$port" --module natscale.cli selftest
