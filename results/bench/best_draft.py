"""The distilled draft with the highest mean tau at gamma 4 over every task and T of a results.json
(evaluate.py's), printed by name: the one a device session brings back.

    python results/bench/best_draft.py runs/smollm2/results.json
"""
import json
import sys

rows = json.load(open(sys.argv[1]))["results"]
taus = {}
for r in rows:
    if r["gamma"] == 4 and r["draft"] != "pretrained":
        taus.setdefault(r["draft"], []).append(r["block_efficiency"])
print(max(taus, key=lambda d: sum(taus[d]) / len(taus[d])))
