#!/usr/bin/env bash
# train.py and distill_data.py under torchrun on 2 GPUs (NCCL) against one process, same global batch.
#
#     bash tools/ddp_check.sh
#
# Run from the repository root on a machine with 2 GPUs; it works in /tmp/ddp. It trains a tiny
# model for 20 steps on one GPU and on two, and prints the logged losses of both and the largest
# relative weight difference; then distill_data.py on one GPU and on two, and compares the merged
# files byte for byte. Recorded in results/bench/ddp_nccl_h200x2.log (2 H200s); docs/torchrun.md.
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
D=/tmp/ddp; rm -rf $D; mkdir -p $D
nvidia-smi --query-gpu=name --format=csv,noheader
python3 - <<'PY'
import data, tokenizer, model, torch
w = data.make_world(data.preset("tiny", seed=0, corpus_docs=200, instruct_examples=200, seed_prompts=48))
data.write_world(w, "/tmp/ddp/world")
tok = tokenizer.train_sentencepiece([*w["corpus"], *[r["prompt"] + "\n" + r["response"] for r in w["instructions"]]], "/tmp/ddp/tok.model", 400)
torch.manual_seed(0)
model.save_model(model.Llama(model.ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=384)), "/tmp/ddp/init")
PY
COMMON="--mode pretrain --init $D/init --data $D/world/corpus.txt,$D/world/instructions.jsonl --tokenizer $D/tok.model --max-steps 20 --batch-size 16 --micro-batch-size 4 --log-interval 5 --eval-interval 20 --ckpt-interval 10 --device cuda --lr 3e-3"
python3 train.py $COMMON --out $D/single 2>&1 | tail -2
torchrun --standalone --nproc_per_node=2 train.py $COMMON --out $D/ddp 2>&1 | grep -v Warning | tail -3
python3 - <<'PY'
import json, math
from safetensors.torch import load_file
def losses(p): return [r["loss"] for r in map(json.loads, open(p)) if "loss" in r]
a, b = losses("/tmp/ddp/single/log.jsonl"), losses("/tmp/ddp/ddp/log.jsonl")
print("train.py losses single:", [round(x, 5) for x in a]); print("train.py losses 2 GPUs:", [round(x, 5) for x in b])
wa, wb = load_file("/tmp/ddp/single/model/model.safetensors"), load_file("/tmp/ddp/ddp/model/model.safetensors")
rel = max(float((wa[k] - wb[k]).norm() / wa[k].norm()) for k in wa)
print(f"max relative loss difference {max(abs(x - y) / abs(x) for x, y in zip(a, b)):.2e}, max relative weight difference {rel:.2e}")
PY
DD="--target $D/single/model --tokenizer $D/tok.model --prompts $D/world/seed_prompts.jsonl --temperatures 0,1 --top-ps 1.0 --systems without --max-new-tokens 32 --batch-size 8 --device cuda"
python3 distill_data.py $DD --out $D/gen_single.jsonl 2>&1 | tail -1
torchrun --standalone --nproc_per_node=2 distill_data.py $DD --out $D/gen_ddp.jsonl 2>&1 | grep -v Warning | tail -2
ls $D/gen_ddp.jsonl*
cmp $D/gen_single.jsonl $D/gen_ddp.jsonl && echo "distill_data.py: 2-GPU merged shards byte-identical to the single-GPU file ($(wc -l < $D/gen_single.jsonl) records)"
