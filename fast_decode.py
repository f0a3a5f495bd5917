"""
fast_decode.py: what makes decoding fast on a GPU, kept apart so model.py and speculative.py
read without it. Nothing here changes WHAT is computed, only how many kernels it takes and how
they are launched; tests/test_gpu.py checks every path against eager decoding.

Why decoding needs this. A decode step at batch 1 reads every weight once and does a few FLOPs
per byte, and it is made of hundreds of small kernels (30 layers x ~15 for SmolLM2). Launched one
by one from Python, each costs the CPU a few microseconds, which at these sizes is longer than the
GPU needs to run it: the GPU waits for the CPU. Three remedies, each optional:
  fuse_projections  wq/wk/wv and w1/w3 of every layer as one matrix each: fewer, larger products.
  compile_blocks    torch.compile fuses the element-wise work (norms, RoPE, SwiGLU) of each block.
  CudaGraph         records a whole step -- a model call AND its sampling and bookkeeping -- once,
                    then replays it with one launch. speculative.py writes its steps so that they
                    can be recorded: every input and output lives at a fixed address on the device
                    and no step asks the host a question.
On a CPU the launches are cheap and the bytes are not; there the one remedy is for the few-row
matrix products of a verify pass (FewRowLinear).
DECODE_PATHS names the combinations that bench.py compares and the CLIs offer (--decode-path).
"""

import contextlib
import gc

import torch
import torch.nn as nn

from model import Llama

GPU_PATHS = ("graphs", "compile+graphs", "fused+compile+graphs")      # need the models on a CUDA GPU
DECODE_PATHS = ("eager", "few-row-matmuls") + GPU_PATHS


class FewRowLinear(nn.Linear):
    """nn.Linear whose product, for at most FEW_ROWS rows of input, is computed as (W x^T)^T.

    The same numbers as x W^T up to rounding, but not the same work for the BLAS library. A
    verify pass multiplies gamma + 1 rows by every weight matrix. Asked for x W^T with a few
    rows, MKL on a CPU takes a general matrix-product path that costs several times the 1-row
    product (a matrix-vector product, which just streams W once); asked for W x^T -- a tall
    matrix times a few columns -- it streams W once again (BENCHMARKS.md section 0b has the
    timings). That is one CPU's BLAS: on another 2-core machine the plain few-row product was
    the fast one and this form 3x slower (also section 0b), so time both before choosing the
    path. With more rows (training, prefill) the usual product is the right one."""
    FEW_ROWS = 16       # above any verify pass here (gamma + 1 rows); wider products were not measured

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > self.FEW_ROWS:
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1])                                    # (rows, in)
        return (self.weight @ flat.T).T.reshape(*x.shape[:-1], self.out_features)   # (..., out)


def few_row_matmuls(model: Llama) -> Llama:
    """Make every bias-free nn.Linear of the model (all of a Llama's) a FewRowLinear, in place:
    same parameters, same state_dict, only the forward changes."""
    for module in model.modules():
        if type(module) is nn.Linear and module.bias is None:
            module.__class__ = FewRowLinear
    return model


@torch.no_grad()
def fuse_projections(model: Llama) -> Llama:
    """Store wq, wk, wv of every layer as row blocks of ONE matrix, and w1, w3 likewise.

    At batch 1 each projection is a matrix-vector product that reads its whole matrix, so
    one product over the stacked matrix reads the same bytes with one kernel instead of
    three (two). The parameters keep their names and shapes, now as views into the stacked
    matrix, so state_dict(), save_model and the exports see the usual Llama weights. For
    inference only, and after .to(device, dtype) (which would copy the views apart again).
    """
    def stack(linears: list[nn.Linear]) -> torch.Tensor:
        stacked = torch.cat([linear.weight for linear in linears])          # (sum of outs, in)
        first = 0
        for linear in linears:
            rows = linear.out_features
            linear.weight = nn.Parameter(stacked[first: first + rows], requires_grad=False)
            first += rows
        return stacked

    for layer in model.layers:
        layer.attention.wqkv = stack([layer.attention.wq, layer.attention.wk, layer.attention.wv])
        layer.feed_forward.w13 = stack([layer.feed_forward.w1, layer.feed_forward.w3])
    return model


def compile_blocks(model: Llama, backend: str = "inductor") -> Llama:
    """torch.compile every transformer block of the model, in place, for decoding.

    Compiling block by block ("regional compilation") rather than the whole forward: the blocks
    are one piece of code with different weights, and torch.compile treats a module's weights as
    inputs, so it compiles the first block and every other block (of this model, and of any model
    with the same block shapes) reuses that compilation. Compile time is then one block's, not
    n_layers times it (BENCHMARKS.md section 1 has both measured at the 7B shape). What
    compiling buys -- each block's element-wise work (norms, RoPE, SwiGLU, residual adds) fused into
    few kernels -- is the same; only fusions across a block boundary are lost. A call with a new
    input shape compiles again, after which torch.compile makes the dimension that changed
    dynamic (the verify length, the prompt length, the cache size), so a handful of compilations
    serve every gamma and decoder. The model keeps its parameters and state_dict; from here on
    every call of it runs the compiled blocks. `backend` is torch.compile's (the tests use
    "eager": the same tracing and reuse, without generating kernels)."""
    # torch.compile keeps one compiled version per input shape and refuses a 9th by default (an
    # error with fullgraph=True); the count is shared by every model: allow 64.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in model.layers:
        layer.compile(fullgraph=True, backend=backend)
    return model


class CudaGraph:
    """fn() -- a zero-argument function whose tensors all live at fixed addresses -- run once
    normally, then recorded as a CUDA graph; every later call replays the recording.

    The first call is a real step: it runs on a side stream (capture needs the lazy work --
    torch.compile's compilation, cuBLAS's workspace -- done before it starts), and then the
    capture records the same kernels without running them. A replay runs exactly the recorded
    kernels on whatever the fixed tensors hold now, and returns the same output tensors,
    overwritten. Random numbers: `generator` is registered with the graph, so each replay
    draws the next numbers of its stream, the same ones fn() would have drawn eagerly. Python's
    garbage collector is paused while the capture runs (garbage_collector_paused says why).
    """

    def __init__(self, fn, generator: torch.Generator | None = None):
        self.fn, self.generator, self.graph, self.output = fn, generator, None, None

    def __call__(self):
        if self.graph is not None:
            self.graph.replay()
            return self.output
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            output = self.fn()                         # the warm-up is this call's real step
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        if self.generator is not None:                 # the default generator needs no registration
            self.graph.register_generator_state(self.generator)
        with garbage_collector_paused():
            with torch.cuda.graph(self.graph):         # records kernels; nothing runs
                self.output = self.fn()
        return output


@contextlib.contextmanager
def garbage_collector_paused():
    """Collect Python's garbage now, then none until the block ends.

    A CUDA graph is freed with CUDA calls that a capture forbids, and they invalidate it
    (cudaErrorStreamCaptureInvalidated at some later kernel). A decoder that goes out of scope
    holds its recordings in a reference cycle (its steps are closures over the decoder), so only
    the cyclic collector frees them, whenever it happens to run: in an evaluation that makes a
    decoder per row, sooner or later in the middle of the next row's capture. torch.cuda.graph
    used to collect before capturing; since PyTorch 2.9 it no longer does."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def apply_decode_path(models: list[Llama], path: str) -> dict:
    """Prepare the models for `path` (one of DECODE_PATHS), in place: fuse their projections,
    compile their blocks or switch their linear layers where it asks for it; return the
    decoders' options for that path, {"graphs": bool}."""
    if path not in DECODE_PATHS:
        raise ValueError(f"unknown decode path {path!r}; choose one of {DECODE_PATHS}")
    if path in GPU_PATHS and not all(model.device.type == "cuda" for model in models):
        raise ValueError(f"decode path {path!r} needs the models on a CUDA GPU; "
                         f"use 'eager' or 'few-row-matmuls' on this machine")
    for model in {id(m): m for m in models}.values():
        if path.startswith("fused"):
            fuse_projections(model)
        if "compile" in path:
            compile_blocks(model)
        if path == "few-row-matmuls":
            few_row_matmuls(model)
    return {"graphs": path in GPU_PATHS}
