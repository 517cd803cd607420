#!/usr/bin/env bash
# Start this node's share of a multi-node natscale job without ssh: run it on EVERY node, with the
# same arguments except NODE_RANK (the node's line in HOSTFILE, counting from 0).
#   launcher/run_node.sh NODE_RANK HOSTFILE MASTER_ADDR CONFIG [--set KEY=VALUE ...] [--resume]
#   e.g. node-a: IFNAME=eth1 launcher/run_node.sh 0 hosts 10.0.0.1 run.yaml
#        node-b: IFNAME=eth1 launcher/run_node.sh 1 hosts 10.0.0.1 run.yaml
# MASTER_ADDR is node 0's address on the network between the nodes.
# Environment: MASTER_PORT (default 29500, the same on every node), IFNAME (that network's
# interface: sets GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME), NATSCALE_LAUNCH_ARGS (more
# `natscale launch` options, e.g. "--gpus-per-node 4 --dry-run"), NATSCALE (the natscale
# command; default: `natscale` on PATH, else `python3 -m natscale.cli`).
# Prepare the data once beforehand (natscale prepare) on storage every node reads.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
node_rank=$1 hostfile=$2 master_addr=$3
shift 3
if [ -n "${NATSCALE:-}" ]; then
  read -r -a natscale <<<"$NATSCALE"
elif command -v natscale >/dev/null 2>&1; then
  natscale=(natscale)
else
  natscale=(python3 -m natscale.cli)
fi
read -r -a extra <<<"${NATSCALE_LAUNCH_ARGS:-}"
ifname=()
[ -n "${IFNAME:-}" ] && ifname=(--ifname "$IFNAME")
exec "${natscale[@]}" launch --backend no-ssh --hostfile "$hostfile" --node-rank "$node_rank" \
  --master-addr "$master_addr" --master-port "${MASTER_PORT:-29500}" "${ifname[@]}" "${extra[@]}" \
  -- "$@"
