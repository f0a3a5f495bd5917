"""A trained draft made small enough to leave a device call: saved as bf16 (checkpoints.save_model)
in OUT, its model.safetensors cut into parts of 15 MiB (draft.part00, draft.part01, ...; at most
8 files of 16 MiB come back from a call). Joined again with `cat draft.part* > model.safetensors`
beside config.json; train.py and evaluate.py load it in float32.

    python results/bench/draft_parts.py runs/smollm2/draft-kld/model /tmp/draft
"""
import os
import sys

import torch

from checkpoints import load_model, save_model

PART_BYTES = 15 * 2**20
source, out = sys.argv[1], sys.argv[2]
save_model(load_model(source).to(torch.bfloat16), out)
with open(os.path.join(out, "model.safetensors"), "rb") as f:
    for i, part in enumerate(iter(lambda: f.read(PART_BYTES), b"")):
        with open(os.path.join(out, f"draft.part{i:02d}"), "wb") as p:
            p.write(part)
