"""distill_data.distill writes what each job asks for (issue 38: distill() passing no top-p to the
decoder passed every test, since the other data tests compare bytes with output of the same code).

The target here is a Llama whose next-token distribution does not depend on the context (every
block adds nothing and every embedding is the same vector), so the test knows it exactly and
computes each setting's nucleus by hand. The tokenizer is a stand-in with one id per character
(what distill needs of one: chat_format, encode, decode, pad_id, stop_ids), so a system message
can be found in the prompt ids.
"""

import torch

from answers import load_distill_records
from distill_data import DEFAULT_SYSTEM, distill, make_jobs, sampling_grid
from model import Llama, get_config

V, PAD, BOS, EOS = 12, 0, 1, 2
# Context-free logits: token 5 leads, then 7, 9, 4, 10; eos is unlikely; every other token -0.5.
LOGITS = {5: 2.0, 7: 1.6, 9: 1.2, 4: 0.8, 10: 0.4, EOS: -1.0}
# softmax(LOGITS / T), sorted, with the mass before each token (by hand, 4 digits):
#   T = 1:   5 .3160 (0), 7 .2118 (.3160), 9 .1420 (.5277), 4 .0952 (.6697), 10 .0638 (.7649), ...
#   T = 0.5: 5 .5478 (0), 7 .2461 (.5478), 9 .1106 (.7939), ...
# The 0.7-nucleus keeps a token while the mass before it is < 0.7:
NUCLEUS = {1.0: {5, 7, 9, 4}, 0.5: {5, 7}}
ARGMAX = 5


class CharTokenizer:
    """One id per character (3..11), Llama 2's chat layout; just enough for distill()."""
    chat_format, bos_id, eos_id, pad_id, stop_ids, vocab_size = "llama2", BOS, EOS, PAD, {EOS}, V

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [BOS] * bos + [3 + ord(c) % 9 for c in text] + [EOS] * eos

    def decode(self, ids) -> str:
        return " ".join(map(str, ids))


def context_free_target() -> Llama:
    model = Llama(get_config("test", vocab_size=V, n_layers=1, dim=16, n_heads=2, n_kv_heads=1, ffn_dim=32,
                             max_seq_len=256)).eval()
    with torch.no_grad():
        for layer in model.layers:                 # every block adds 0 to the residual stream
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.tok_embeddings.weight.fill_(1.0)     # every position's hidden state: all ones (RMSNorm keeps it)
        model.output.weight.zero_()
        model.output.weight[:, 0] = -0.5
        for token, logit in LOGITS.items():
            model.output.weight[token, 0] = logit
        expected = torch.tensor([LOGITS.get(token, -0.5) for token in range(V)])
        logits = model(torch.randint(0, V, (2, 30), generator=torch.Generator().manual_seed(0)))
        torch.testing.assert_close(logits, expected.expand_as(logits), atol=1e-4, rtol=0)   # whatever the context
    return model


def contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i: i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def test_records_follow_their_jobs_temperature_top_p_and_system(tmp_path):
    """Guards distill(): top-p below 1 must reach the decoder (records hold nucleus tokens only),
    temperature 0 writes the argmax, and every record carries, and was prompted with, its job's
    temperature, top-p and system message (in make_jobs' order: setting by setting, prompt by prompt)."""
    tok, own_system = CharTokenizer(), "Answer in numbers only."
    prompts = [{"prompt": "Count to three."}, {"prompt": "Name two digits.", "system": own_system}]
    grid = sampling_grid([0.0, 0.5, 1.0], [0.7, 1.0], [True, False])
    jobs = make_jobs(prompts, grid)
    out = tmp_path / "distill.jsonl"
    distill(context_free_target(), tok, jobs, str(out), max_new_tokens=16, batch_size=3, seed=0)
    records = load_distill_records(str(out))

    # (temperature, top_p, system) of jobs 0.. typed by hand: T=0 keeps one top-p (1.0).
    expected = []
    for temperature, top_p in [(0.0, 1.0), (0.5, 0.7), (0.5, 1.0), (1.0, 0.7), (1.0, 1.0)]:
        expected += [(temperature, top_p, DEFAULT_SYSTEM), (temperature, top_p, own_system),
                     (temperature, top_p, None), (temperature, top_p, None)]
    assert [r["job"] for r in records] == list(range(len(expected)))
    for record, (temperature, top_p, system) in zip(records, expected):
        assert (record["temperature"], record["top_p"], record["system"]) == (temperature, top_p, system)
        assert record["prompt"] == prompts[record["job"] % 2]["prompt"]
        for candidate in (DEFAULT_SYSTEM, own_system):        # the prompt ids hold the job's system message only
            assert contains(record["prompt_ids"], tok.encode(candidate)) == (candidate == system), record["job"]

    answers = {}                              # (temperature, top_p) -> every answer token of those records
    for record in records:
        assert EOS not in record["response_ids"][:-1]
        answers.setdefault((record["temperature"], record["top_p"]), []).extend(record["response_ids"])
    assert set(answers[(0.0, 1.0)]) == {ARGMAX}
    for temperature in (0.5, 1.0):
        in_nucleus = set(answers[(temperature, 0.7)])
        assert in_nucleus <= NUCLEUS[temperature], f"T={temperature}, top-p 0.7 wrote {in_nucleus - NUCLEUS[temperature]}"
        assert len(in_nucleus) >= 2, "sampling, not the argmax"
        # Power: without top-p the same temperature writes tokens outside that nucleus (~20% of them).
        assert set(answers[(temperature, 1.0)]) - NUCLEUS[temperature]
