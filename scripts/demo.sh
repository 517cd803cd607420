#!/usr/bin/env bash
# The demo on the bundled example data, CPU only:
#   natscale prepare (NAT-marked, loss-masked, packed rows)
#   -> natscale train (2 ranks, DeepSpeed ZeRO-3, the tiny Llama from random init)
#   -> Hugging Face export (RUN/train/hf) and loss/throughput plots (RUN/train/plots)
#   -> natscale eval of the export on held-out questions (RUN/eval).
set -euo pipefail
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN=${RUN:-runs/demo}
PORT=${MASTER_PORT:-$(python -c "from natscale.train.dist import free_port; print(free_port())")}
start=$(date +%s)

# the demo deletes only folders it made: RUN is marked on the first run, and an unmarked,
# non-empty RUN is refused (it may hold someone's work)
if [[ -d $RUN && ! -e $RUN/.natscale-demo && -n $(ls -A "$RUN") ]]; then
  echo "demo: $RUN exists and was not made by the demo; set RUN=another/folder (or remove it)" >&2
  exit 2
fi
mkdir -p "$RUN" && touch "$RUN/.natscale-demo"

natscale env
natscale prepare examples/configs/prepare_math.yaml --out "$RUN/data" \
  --set pack.max_seq_len=1024 --overwrite --no-progress
rm -rf "$RUN/train"
torchrun --nnodes 1 --nproc_per_node 2 --master_addr 127.0.0.1 --master_port "$PORT" \
  -m natscale.cli train examples/configs/train_tiny.yaml \
  --set output_dir="$RUN/train" --set data.path="$RUN/data"
natscale plot "$RUN/train"
python - "$RUN/train" <<'PY'
import json, sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

run = Path(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(run / "hf")
tok = AutoTokenizer.from_pretrained(run / "hf")
ids = tok("Thought: I need the total price.\nAction: calculate[", return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
print(f"demo: export loads ({sum(p.numel() for p in model.parameters()):,} parameters); "
      f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; greedy continuation: "
      f"{tok.decode(out[0, ids.shape[1]:])!r}")
PY
rm -rf "$RUN/eval"
natscale eval examples/configs/eval_math.yaml --data "$RUN/data" --set model="$RUN/train/hf" \
  --out "$RUN/eval" --set limit="${EVAL_LIMIT:-50}" --no-progress
echo "demo: prepare -> train -> export -> eval in $(( $(date +%s) - start )) s; see $RUN/train"
