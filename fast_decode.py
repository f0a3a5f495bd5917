"""
fast_decode.py: what makes decoding fast on a GPU, kept apart so model.py and speculative.py
read without it. Nothing here changes WHAT is computed beyond float rounding, only how many
kernels it takes and how they are launched (the quantized paths of quantize.py are another model);
tests/test_gpu.py checks every GPU path against eager decoding.

Why decoding needs this. A decode step at batch 1 reads every weight once and does a few FLOPs
per byte, and it is made of hundreds of small kernels (30 layers x ~15 for SmolLM2). Launched one
by one from Python, each costs the CPU a few microseconds, which at these sizes is longer than the
GPU needs to run it: the GPU waits for the CPU. Three remedies, each optional:
  fuse_projections  wq/wk/wv and w1/w3 of every layer as one matrix each: fewer, larger products.
  compile_blocks    torch.compile fuses the element-wise work (norms, RoPE, SwiGLU) of each block;
                    the GPU paths that compile give the decoders compiled sampling as well
                    (speculative.Sampler, apply_decode_path's compile_sampling).
  CudaGraph         records a whole step -- a model call AND its sampling and bookkeeping -- once,
                    then replays it with one launch. speculative.py writes its steps so that they
                    can be recorded: every input and output lives at a fixed address on the device
                    and no step asks the host a question (a prompt too: it goes in as recorded
                    chunks of a fixed length). StepRunner is how a decoder runs its steps either
                    way, eagerly or recorded.
On a CPU the launches are cheap and the bytes are not; there the remedies are for the BLAS
library's slow paths through products of one or a few rows, a decode step's and a verify pass's
(FewRowLinear), for the draft's LM head (ShortlistHead), and fewer bytes per weight (quantize.py:
the decode paths bf16-weights and int8-weights).
DECODE_PATHS names the combinations that bench.py compares and the CLIs offer (--decode-path).
"""

import contextlib
import gc
import time

import torch
import torch.nn as nn

from model import Llama
from quantize import quantize_weights

GPU_PATHS = ("graphs", "compile+graphs", "fused+compile+graphs")      # need the models on a CUDA GPU
QUANTIZED_PATHS = {"bf16-weights": "bfloat16", "int8-weights": "int8",  # a CPU's: quantize.py; with
                   "compile+int8-weights": "int8"}                      # its blocks compiled, too
DECODE_PATHS = ("eager", "few-row-matmuls", *QUANTIZED_PATHS) + GPU_PATHS


class FewRowLinear(nn.Linear):
    """nn.Linear whose product, for 1 to FEW_ROWS rows of input, is computed as (W x^T)^T.

    The same numbers as x W^T up to rounding, but not the same work for the BLAS library. A
    verify pass multiplies gamma + 1 rows by every weight matrix. Asked for x W^T with a few
    rows, MKL on a CPU takes a general matrix-product path that costs several times the 1-row
    product; asked for W x^T -- a tall matrix times a few columns -- it streams W once, on every
    core (BENCHMARKS.md has the timings). Two details decide whether it does:
      - x must be row-major, so that x^T is a transposed view: the same product with x^T stored
        column by column is several times slower. The output (W x^T)^T is such a transposed
        view, so it is made contiguous before the next layer reads it.
      - one row. W x^T with one column is a matrix-vector product, another routine; on some CPUs
        it streams W at less than half the speed of the 2-column product (docs/findings.md).
        `one_row_as_two` then gives the row twice and keeps
        one copy of the result; few_row_matmuls decides it per model by timing a step both ways,
        so that plain decoding on this path is never slower than on the library's own products.
    With more rows (training, prefill) the usual product is the right one."""
    FEW_ROWS = 16       # above any verify pass here (gamma + 1 rows); wider products were not measured
    one_row_as_two = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > self.FEW_ROWS or (rows == 1 and not self.one_row_as_two):
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1]).contiguous()                      # (rows, in), row-major
        if rows == 1:
            flat = torch.cat([flat, flat])                                     # (2, in): the row twice
        out = (self.weight @ flat.T).T[:rows].contiguous()                    # (rows, out)
        return out.view(*x.shape[:-1], self.out_features)                    # (..., out)


def few_row_matmuls(model: Llama, one_row_as_two: bool | None = None) -> Llama:
    """Make every bias-free nn.Linear of the model (all of a Llama's) a FewRowLinear, in place:
    same parameters, same state_dict, only the forward changes. one_row_as_two: how 1-row
    products are taken (FewRowLinear); None: whichever makes a decode step of this model faster
    on a CPU, timed here (faster_as_two_rows), and the library's own on a GPU."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is None]
    for module in linears:
        module.__class__ = FewRowLinear
    if one_row_as_two is None:
        one_row_as_two = model.device.type == "cpu" and faster_as_two_rows(model, linears)
    for module in linears:
        module.one_row_as_two = one_row_as_two
    return model


@torch.no_grad()
def faster_as_two_rows(model: Llama, linears: list[FewRowLinear], repeats: int = 7) -> bool:
    """Is a 1-token decode step of the model faster with its 1-row products taken as 2-row ones?
    Median of `repeats` steps each way, the two ways alternating so that a drift of the machine's
    speed hits both, after one untimed step each."""
    cache = model.new_cache(1, 64)
    token = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    slot = torch.zeros(1, dtype=torch.long, device=model.device)
    seconds = {False: [], True: []}
    for _ in range(repeats + 1):
        for as_two in (False, True):
            for module in linears:
                module.one_row_as_two = as_two
            started = time.perf_counter()
            model(token, cache, slot)
            seconds[as_two].append(time.perf_counter() - started)
    median = {as_two: sorted(times[1:])[repeats // 2] for as_two, times in seconds.items()}
    return median[True] < median[False]


class ShortlistHead(nn.Module):
    """A draft's LM head over a shortlist S of the vocabulary: logits (..., K) for the K
    shortlisted tokens `token_ids` (sorted), so the draft's distribution q is over S, and
    q(x) = 0 for every x outside it. The decoder maps a drafted index back to its token id
    (SpeculativeDecoder.block) and `verify` takes q over S (its draft_vocab).

    Why it is still lossless. Speculative sampling (PAPER.md section 4.1) returns exactly the
    target's distribution p for ANY draft distribution q: a drafted x is kept with probability
    min(1, p(x)/q(x)), and a rejection draws from the residual max(p - q, 0), normalised. Where
    q(x) = 0 the draft never proposes x and the residual keeps all of p(x), so a token outside
    the shortlist is still written exactly as often as the target would write it -- through the
    residual draw after a rejection instead of through an acceptance. What the shortlist costs is
    acceptance: alpha = sum_x min(p(x), q(x)) loses the target's mass outside the shortlist.

    Why it pays. SmolLM2's head is a 49,152 x 576 matrix, as many bytes as 8 of its blocks: on a
    CPU, where a step's cost follows the bytes it reads, it is a large share of a small draft's
    step, while the target writes nearly all of its answers with a few thousand tokens
    (answers.answer_vocabulary picks them from the distillation data; BENCHMARKS.md has
    the coverage and the costs). The draft's sampling then works on K numbers, not the whole
    vocabulary. On a GPU, where a small model's step follows its kernel count, it gains nothing.
    The head's rows are copied (an untied matrix of shortlist x dim); the model's embedding is
    untouched. For decoding only: save_model expects the usual head."""

    def __init__(self, output: nn.Linear, token_ids: torch.Tensor):
        super().__init__()
        weight = output.weight.detach()
        self.proj = nn.Linear(weight.shape[1], len(token_ids), bias=False, device=weight.device, dtype=weight.dtype)
        self.proj.weight = nn.Parameter(weight[token_ids.to(weight.device)].clone(), requires_grad=False)
        self.register_buffer("token_ids", token_ids.to(weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)                                                        # (B, T, K)


def shortlist_head(model: Llama, token_ids: list[int]) -> Llama:
    """Give the model (a draft) a ShortlistHead over token_ids, in place. Before apply_decode_path,
    so that the decode path's changes (FewRowLinear, graphs) reach the new head too."""
    ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
    if len(ids) == 0 or ids[0] < 0 or ids[-1] >= model.config.vocab_size:
        raise ValueError(f"a shortlist needs token ids in 0..{model.config.vocab_size - 1}; "
                         "build it from data written with this model's tokenizer")
    model.output = ShortlistHead(model.output, ids)
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
    """torch.compile every transformer block of the model, in place, for decoding, and beside
    them the final norm and the RoPE angles and mask of a cached call (Llama.cache_inputs).

    Compiling block by block ("regional compilation") rather than the whole forward: the blocks
    are one piece of code with different weights, and torch.compile treats a module's weights as
    inputs, so it compiles the first block and every other block (of this model, and of any model
    with the same block shapes) reuses that compilation. Compile time is then one block's, not
    n_layers times it (BENCHMARKS.md has both measured at the 7B shape). What
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
    # The work around the blocks too: the final norm and a cached call's RoPE angles and mask
    # (Llama.cache_inputs), each a handful of small kernels eagerly and one or two compiled. At
    # batch 1 a kernel costs a few microseconds whatever its size, so this makes a small draft's
    # step cheaper by a larger share than the target's.
    model.norm.compile(fullgraph=True, backend=backend)
    model.cache_inputs = torch.compile(model.cache_inputs, fullgraph=True, backend=backend)
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


PREFILL_CHUNK = 128     # slots per recorded prefill step: most chat prompts fit in one


class ReadLater:
    """A step's result copied to the host without waiting, so that the host can launch the next
    step before it reads this one. Why: a decoder reads every step's result (its tokens, to check
    for a stop token; a block's accepted count), and if it waits for the GPU before launching
    the next step, the GPU idles from the end of one step to the start of the next while the host
    reads, decides and launches (at SmolLM2's size the host's launch of a recorded step is not
    negligible beside the step: tools/profile_smollm2.py times both). Launched first, the next
    step is queued before the GPU finishes this one.
    The copy is queued on the GPU right after the step (into pinned host memory) and an event
    after it, so the read waits for this step only, not for the one launched after it; and the
    copy is taken before that next step runs, which overwrites a recorded step's outputs."""

    def __init__(self, result: torch.Tensor):
        self.values = result.to("cpu", non_blocking=True)       # pinned: a non-blocking copy
        self.ready = torch.cuda.Event()
        self.ready.record(torch.cuda.current_stream(result.device))   # the copy's stream, on the result's GPU

    def tolist(self) -> list:
        self.ready.synchronize()
        return self.values.tolist()


class StepRunner:
    """How a decoder runs its steps: eagerly (the step is a plain Python function of tensors at
    fixed addresses) or, with graphs=True on a CUDA GPU, each kind of step recorded once as a
    CudaGraph and replayed. speculative.py's decoders call it where a step runs, in one line,
    so the algorithm reads the same either way.

    What the recordings need beyond that, kept here:
      run         one recording per kind of step (`key`: its sampling settings, its gamma...),
                  made on the kind's first use;
      prefill     a prompt's keys and values, in chunks of a fixed length when recorded;
      generator   the recordings draw from a generator of their own, registered with them;
                  the caller's generator (or torch's default one) hands its state over before a
                  call and takes it back after, so a recorded call draws the same random numbers
                  as the eager one would;
      read_later  a step's result on its way to the host, read after the next step is launched
                  (run_ahead 1: a decoder launches the next step before it reads this one; 0: it
                  reads each step first; ReadLater says why)."""

    def __init__(self, device: torch.device, graphs: bool = False):
        if graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA GPU; decode eagerly on this machine")
        self.graphs, self.device, self.recorded, self.prefill_slots = graphs, device, {}, {}
        self.own_generator = torch.Generator(device) if graphs else None
        self.prefill_chunk = PREFILL_CHUNK if graphs else None      # None: a prompt in one call
        # On a CPU a step has run to its end when its call returns: reading it late saves nothing,
        # and at a stop token the step launched ahead would be a whole step for nothing.
        self.run_ahead = 1 if device.type == "cuda" else 0

    def read_later(self, result: torch.Tensor) -> "ReadLater | torch.Tensor":
        """result, to be read with .tolist() after the next step is launched (ReadLater); on a
        CPU result itself (a new tensor per eager step, which the next step does not overwrite)."""
        return ReadLater(result) if self.device.type == "cuda" else result

    def run(self, key, step):
        """step() eagerly, or the replay of its recording for `key` (recorded on first use)."""
        if not self.graphs:
            return step()
        if key not in self.recorded:
            self.recorded[key] = CudaGraph(step, self.own_generator)
        return self.recorded[key]()

    def prefill(self, model: Llama, tokens: torch.Tensor, cache, first: int, end: int) -> None:
        """Keys and values of the slots first..end-1 of tokens (B, n_slots) into the model's cache.

        prefill_chunk=None: in one forward call. prefill_chunk=C: in calls over C slots each (at
        most n_slots), the last one moved back to end at the last slot where it would run past
        it, each one a recorded step when graphs are on. Why: a prompt's length changes from call
        to call, so a one-call prefill cannot be recorded, and unrecorded a small model's forward
        costs what launching its kernels costs (through torch.compile's blocks, several times a
        recorded step), while a chunk has one shape for every prompt.
        Why it is exact: a chunk past `end` writes slots the decoder has not reached, which it
        overwrites before anything attends to them (the causal mask hides them; the same as a
        rollback after a rejection), and a slot written twice gets the same keys and values
        again (up to float rounding), from the same token, position and earlier slots.
        """
        if end <= first:
            return
        if self.prefill_chunk is None:
            model.prefill(tokens[:, first:end], cache, torch.arange(first, end, device=tokens.device))
            return
        chunk = min(self.prefill_chunk, tokens.shape[1])
        key = ("prefill", id(cache), chunk)
        if key not in self.prefill_slots:      # the step's fixed tensors: the chunk's next slot, its offsets
            self.prefill_slots[key] = (torch.zeros(1, dtype=torch.long, device=tokens.device),
                                       torch.arange(chunk, device=tokens.device))
        next_slot, offsets = self.prefill_slots[key]

        def step():
            slots = next_slot.clamp(max=tokens.shape[1] - chunk) + offsets        # (C,)
            model.prefill(tokens.index_select(1, slots), cache, slots)
            next_slot.add_(chunk)

        next_slot.fill_(first)
        for _ in range(-(-(end - first) // chunk)):        # ceil((end - first) / chunk) chunks
            self.run(key, step)

    @contextlib.contextmanager
    def generator(self, generator: torch.Generator | None):
        """The generator a call's steps draw from: the caller's own when eager; when recorded,
        the recordings' generator, holding the caller's state for the call."""
        if not self.graphs:
            yield generator
            return
        source = generator or torch.cuda.default_generators[self.device.index or torch.cuda.current_device()]
        self.own_generator.set_state(source.get_state())
        try:
            yield self.own_generator
        finally:
            source.set_state(self.own_generator.get_state())


def apply_decode_path(models: list[Llama], path: str) -> dict:
    """Prepare the models for `path` (one of DECODE_PATHS), in place: fuse their projections,
    compile their blocks or switch their linear layers where it asks for it; return the
    decoders' options for that path: {"graphs": bool, "compile_sampling": bool}. A GPU path that
    compiles the blocks compiles the decoders' sampling too (speculative.Sampler): there each of
    its operations is a kernel of its own. On a CPU an operation costs its arithmetic, not a
    launch, and the CPU's compiled path keeps the sampling eager."""
    if path not in DECODE_PATHS:
        raise ValueError(f"unknown decode path {path!r}; choose one of {DECODE_PATHS}")
    if path in GPU_PATHS and not all(model.device.type == "cuda" for model in models):
        raise ValueError(f"decode path {path!r} needs the models on a CUDA GPU; "
                         f"use 'eager', 'few-row-matmuls' or a quantized path on this machine")
    if path in QUANTIZED_PATHS and not all(model.device.type == "cpu" for model in models):
        raise ValueError(f"decode path {path!r} is for a CPU; on a GPU use --dtype bfloat16 and a GPU path")
    for model in {id(m): m for m in models}.values():
        if path.startswith("fused"):
            fuse_projections(model)
        if "compile" in path:
            compile_blocks(model)
        if path == "few-row-matmuls":
            few_row_matmuls(model)
        if path in QUANTIZED_PATHS:     # the blocks quantized, the head's few-row products in float32
            quantize_weights(model, QUANTIZED_PATHS[path])
            few_row_matmuls(model)
    return {"graphs": path in GPU_PATHS, "compile_sampling": path in GPU_PATHS and "compile" in path}
