"""Why did a draft end where it did? For each draft of a run, on the first 64 distillation
examples: the mean reward r = 1[p(y) > q(y)] at the data tokens (what tvdpp_datatoken normalises), the
mean TVD(p, q) over response positions (= the rejection probability at T=1), and the draft's
mean entropy. Run from the repository root after `bash run.sh` (RUN, then draft directories):

    PYTHONPATH=. python results/cpu-variants/diagnose.py runs/cpu runs/cpu/draft-pretrained runs/cpu/draft-kld ...
"""
import sys

import torch

from losses import tvd
from checkpoints import load_model
from tokenizer import load_tokenizer
from train import collate, load_examples

run, drafts = sys.argv[1], sys.argv[2:]
tok = load_tokenizer(f"{run}/tokenizer.model")
target = load_model(f"{run}/target/model")
inputs, targets, mask = collate(load_examples([f"{run}/distill.jsonl"], tok, target.config.max_seq_len)[:64], tok.pad_id)
with torch.no_grad():
    target_logits = target(inputs)
    p = target_logits.softmax(-1)[mask]                                  # (N, V)
    y = targets[mask]                                                    # (N,)
    for name in drafts:
        draft_logits = load_model(f"{name}/model")(inputs)
        q = draft_logits.softmax(-1)[mask]
        reward = (p.gather(1, y[:, None]) > q.gather(1, y[:, None])).float().mean()
        entropy = -(q * q.clamp_min(1e-12).log()).sum(-1).mean()
        print(f"{name:>32}: mean reward r {reward:.3f} | mean TVD(p, q) {tvd(draft_logits, target_logits, targets, mask):.3f}"
              f" | draft entropy {entropy:.2f} nats ({int(mask.sum())} response positions)")
