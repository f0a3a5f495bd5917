"""What one cached pass, one draft step and one matrix product cost on this CPU (float32).

    python tools/cpu_costs.py passes --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf [--draft runs/smollm2/draft-kld/model]

Three measurements, one per sub-command:
  passes   one cached pass of T = 1..7 tokens of the target (and of a trained draft) on the decode
           paths 'eager' and 'few-row-matmuls', then the bare product of a few rows with the
           49,152 x 576 output matrix, both ways (x W^T and (W x^T)^T). A speculative block at
           gamma g costs g draft steps (the first of 2 tokens: the draft is re-fed the last two)
           plus one target pass of g + 1 tokens; plain decoding one target pass of 1 token per
           token. (results/smollm2-cpu/step_costs.txt)
  drafts   the 1-token step of each SmolLM2 draft shape with random weights (the two from-scratch
           presets and the 4-block cut with its full head), on both paths, twice each.
           (results/smollm2-cpu/machines.txt: three runs of it)
  products the bare products of SmolLM2's 30 blocks and its head with C = 1..8 columns (random
           weights, streamed from memory), with x^T as a transposed view and stored column by
           column; then one SmolLM2 step on 'few-row-matmuls' with 1-row products taken the
           library's way and as two rows. (results/smollm2-cpu/few_row_costs.txt, recorded at
           commit 92e298e, whose script also timed FewRowLinear's old transposed-view output)
  weights  one product of each SmolLM2 weight shape with 1 to 6 rows, with the weight stored as
           each decode path stores it: float32 (both ways), bfloat16, int8 (quantize.py).
Each figure is a median after warm-ups, at this machine's threads; 64 tokens in the cache.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def median_ms(fn, repeats: int = 15) -> float:
    """Median wall ms of fn over `repeats` calls after 3 untimed ones."""
    import torch
    times = []
    with torch.no_grad():
        for _ in range(3 + repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return sorted(times[3:])[repeats // 2] * 1000


def pass_ms(model, n_tokens: int, context: int = 64) -> float:
    """One cached pass of n_tokens after `context` tokens in the cache (rewriting the same slots)."""
    import torch
    cache = model.new_cache(1, 512)
    with torch.no_grad():
        model(torch.randint(0, 1000, (1, context)), cache, torch.arange(context))        # fill the cache
    tokens, slots = torch.randint(0, 1000, (1, n_tokens)), torch.arange(context, context + n_tokens)
    return median_ms(lambda: model(tokens, cache, slots))


def passes(args) -> None:
    import torch
    import torch.nn.functional as F

    from checkpoints import load_model
    from fast_decode import apply_decode_path

    paths = {"target (SmolLM2-135M)": args.gguf, **({"draft": args.draft} if args.draft else {})}
    for decode_path in args.paths.split(","):
        for name, path in paths.items():
            model = load_model(path, "cpu", torch.float32, base=args.gguf)
            apply_decode_path([model], decode_path)
            print(f"{decode_path:>15} {name}:", " ".join(f"T={t} {pass_ms(model, t):.1f}" for t in range(1, 8)), "ms")
    weight = torch.randn(49152, 576)
    for rows in range(1, 8):
        x = torch.randn(rows, 576)
        print(f"{rows} rows x (49152 x 576)^T: x W^T {median_ms(lambda: F.linear(x, weight)):.2f} ms, "
              f"(W x^T)^T {median_ms(lambda: (weight @ x.T).T):.2f} ms")


def drafts(args) -> None:
    from dataclasses import replace

    import torch

    from fast_decode import apply_decode_path
    from model import Llama, count_params, get_config

    for path in args.paths.split(","):
        for name in ("smollm2-draft-2l", "smollm2-draft-4l", "cut:2", "cut:4"):
            torch.manual_seed(0)
            config = (replace(get_config("smollm2-135m"), n_layers=int(name[4:])) if name.startswith("cut:")
                      else get_config(name))
            model = Llama(config).eval()
            params = count_params(model)          # before a quantized path makes weights buffers
            apply_decode_path([model], path)
            print(f"{path:>15} {name} ({params / 1e6:.1f}M): 1-token step {pass_ms(model, 1):.1f} ms, "
                  f"again {pass_ms(model, 1):.1f} ms")


def products(args) -> None:
    import torch

    from checkpoints import load_model
    from fast_decode import few_row_matmuls

    torch.manual_seed(0)
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # wq wk wv wo w1 w3 w2
    weights = [torch.randn(*shape) for _ in range(30) for shape in shapes] + [torch.randn(49152, 576)]

    def all_products_ms(columns: int, column_major: bool) -> float:
        inputs = {k: torch.randn(columns, k) for k in (576, 1536)}               # (C, in), row-major
        if column_major:
            inputs = {k: x.T.contiguous().T for k, x in inputs.items()}          # same values, x^T contiguous
        times = []
        for _ in range(10):
            started = time.perf_counter()
            for w in weights:
                w @ inputs[w.shape[1]].T
            times.append(time.perf_counter() - started)
        return sorted(times[2:])[4] * 1e3

    print("(a) all 211 products, x^T a transposed view: " +
          ", ".join(f"{c} col {all_products_ms(c, False):.1f} ms" for c in range(1, 9)))
    print("(b) all 211 products, x^T stored column by column: " +
          ", ".join(f"{c} col {all_products_ms(c, True):.1f} ms" for c in (2, 4)))
    for as_two in (False, True):
        model = few_row_matmuls(load_model(args.gguf, "cpu", torch.float32), one_row_as_two=as_two)
        print(f"(c) SmolLM2, 1 token, one row {'as two' if as_two else 'the library way'}: {pass_ms(model, 1):.1f} ms")


def weights(args) -> None:
    """One product of each SmolLM2 weight shape with 1 to 6 rows, as each decode path stores the
    weight: float32 the library's way (x W^T) and few-row-matmuls' way ((W x^T)^T), bfloat16 and
    int8 (quantize.QuantizedLinear)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from quantize import QuantizedLinear
    torch.manual_seed(0)
    for out_features, in_features, name in ((960, 576, "wq|wk|wv"), (576, 576, "wo"), (1536, 576, "w1 or w3"),
                                            (576, 1536, "w2"), (49152, 576, "the LM head")):
        linear = nn.Linear(in_features, out_features, bias=False)
        ways = {"float32 x W^T": lambda x: F.linear(x, linear.weight),
                "float32 (W x^T)^T": lambda x: (linear.weight @ x.T).T.contiguous(),
                "bfloat16": QuantizedLinear(linear, "bfloat16"), "int8": QuantizedLinear(linear, "int8")}
        for label, product in ways.items():
            row_ms = [median_ms(lambda: product(torch.randn(rows, in_features)), repeats=30) for rows in range(1, 7)]
            print(f"{name} ({out_features} x {in_features}), {label}: " +
                  ", ".join(f"{rows} row{'s' * (rows > 1)} {ms:.3f}" for rows, ms in enumerate(row_ms, 1)) + " ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("passes", "drafts", "products", "weights"), help="which measurement (see above)")
    parser.add_argument("--paths", default="eager,few-row-matmuls", help="passes, drafts: the decode paths")
    parser.add_argument("--gguf", default=GGUF, help="the target (passes, products)")
    parser.add_argument("--draft", default=None, help="a trained draft's model directory (passes)")
    args = parser.parse_args()
    import torch                                  # after the flags: --help needs no torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    {"passes": passes, "drafts": drafts, "products": products, "weights": weights}[args.what](args)


if __name__ == "__main__":
    main()
