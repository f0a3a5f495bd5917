"""The training step and the held-out loss, checked against gradients and losses computed here
with plain torch (issue 38: disabling gradient clipping, and computing the held-out loss on
training examples, both passed every test).

The runs are train.main on a tiny data set of distillation-style records (prompt_ids +
response_ids) over a byte vocabulary read from a hand-written GGUF: every training record is
the SAME sequence, so the model memorises it within a few steps, and the held-out records
(train.split_examples: every 50th) continue the same prompt differently, which a model
that memorised the training sequence gets confidently wrong.
"""

import copy
import json
import math

import gguf
import pytest
import torch
import torch.nn.functional as F

import train
from checkpoints import load_model
from tokenizer import gpt2_byte_alphabet

PROMPT = [0, 10, 11]
TRAIN_RESPONSE = [20, 21, 22, 23, 0]
HELD_OUT_RESPONSE = [30, 31, 32, 33, 0]
N_RECORDS = 100


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """vocab.gguf (the 256 bytes and one control token, id 0) and records.jsonl, whose held-out
    records are the ones train.split_examples holds out."""
    root = tmp_path_factory.mktemp("train_step")
    writer = gguf.GGUFWriter(str(root / "vocab.gguf"), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<|endoftext|>"] + sorted(gpt2_byte_alphabet(), key=gpt2_byte_alphabet().get))
    writer.add_token_types([3] + [1] * 256)
    writer.add_token_merges(["Ġ t"])
    writer.add_eos_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _, held_out = train.split_examples(list(range(N_RECORDS)))
    assert 0 < len(held_out) < N_RECORDS // 10
    records = [{"job": j, "prompt_ids": PROMPT, "response_ids": HELD_OUT_RESPONSE if j in held_out else TRAIN_RESPONSE}
               for j in range(N_RECORDS)]
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def run_args(files, out, **flags) -> list[str]:
    values = {"--mode": "pretrain", "--preset": "test", "--data": str(files / "records.jsonl"),
              "--tokenizer": str(files / "vocab.gguf"), "--out": str(out), "--batch-size": "8",
              "--micro-batch-size": "4", "--warmup": "1", "--device": "cpu",
              **{f"--{k.replace('_', '-')}": str(v) for k, v in flags.items()}}
    return [item for flag, value in values.items() for item in (flag, value)]


def response_loss(model, response: list[int]) -> torch.Tensor:
    """Mean cross-entropy of the response tokens after PROMPT, from one full forward pass."""
    ids = torch.tensor([PROMPT + response])
    logits = model(ids)[0, len(PROMPT) - 1: -1]                       # the positions predicting the response
    return F.cross_entropy(logits, torch.tensor(response))


def test_gradient_clipping_bounds_the_gradient_the_optimizer_steps_with(files, tmp_path, monkeypatch):
    """Guards the clip in train_step: with --grad-clip 0.01, the gradient AdamW steps with must be
    the raw gradient (computed here on a copy of the initial model) scaled to norm 0.01. Removing
    the clip hands AdamW the raw gradient, whose norm is far above 0.01."""
    clip, seen, initial = 0.01, [], []
    make_optimizer = train.make_optimizer

    def spying_optimizer(model, lr, weight_decay):
        initial.append(copy.deepcopy(model))                          # the weights of step 0
        optimizer = make_optimizer(model, lr, weight_decay)
        step = optimizer.step

        def spied_step(*args, **kwargs):
            seen.append({name: p.grad.clone() for name, p in model.named_parameters()})
            return step(*args, **kwargs)

        optimizer.step = spied_step
        return optimizer

    monkeypatch.setattr(train, "make_optimizer", spying_optimizer)
    train.main(run_args(files, tmp_path / "run", max_steps=1, grad_clip=clip, lr=1e-3, log_interval=1,
                        eval_interval=1, ckpt_interval=1))
    assert len(seen) == 1
    # Every training example is the same sequence, so step 0's gradient is that of its mean loss.
    model = initial[0]
    response_loss(model, TRAIN_RESPONSE).backward()
    raw = {name: p.grad for name, p in model.named_parameters()}
    raw_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in raw.values()))
    assert raw_norm > 20 * clip, "the fixture's gradient must be far above the clip"
    seen_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in seen[0].values()))
    assert seen_norm == pytest.approx(clip, rel=1e-3)
    for name, grad in seen[0].items():                                # same direction: scaled, not altered
        torch.testing.assert_close(grad, raw[name] * (clip / raw_norm), rtol=1e-3, atol=1e-9)


def test_held_out_loss_is_computed_on_the_held_out_examples_only(files, tmp_path):
    """Guards evaluate() and the split: the logged eval_loss must equal the cross-entropy of the
    HELD-OUT records under the final weights (computed here), which the memorised training
    sequence makes large; on the training records the same weights score far lower."""
    out = tmp_path / "run"
    train.main(run_args(files, out, max_steps=40, lr=1e-2, log_interval=40, eval_interval=40, ckpt_interval=40))
    with open(out / "log.jsonl") as f:
        evals = [record for record in map(json.loads, f) if "eval_loss" in record]
    assert [record["step"] for record in evals] == [40]
    model = load_model(out / "model")                                 # the weights evaluated at step 40
    with torch.no_grad():
        held_out = response_loss(model, HELD_OUT_RESPONSE).item()
        training = response_loss(model, TRAIN_RESPONSE).item()
    assert training < 0.1, "the fixture's model must have memorised the training sequence"
    assert held_out > 30 * training
    assert evals[0]["eval_loss"] == pytest.approx(held_out, rel=1e-4)
