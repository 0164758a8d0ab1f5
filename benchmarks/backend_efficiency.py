"""Backend efficiency: decode ms/step and tok/s of ``generate`` in three modes, and of our decode loop.

For each model (random weights from llem-mlflow's shipped configs, built with
``AutoModelForCausalLM.from_config`` on the device: bf16 on CUDA, fp32 on CPU) and each batch size, every
mode runs beside eager in the same process:

* ``eager``: dynamic cache, no compilation;
* ``static``: ``cache_implementation="static"`` with ``disable_compile=True`` (static cache alone);
* ``static+compile``: static cache and transformers' automatic compilation of the forward pass in
  ``generate`` with ``CompileConfig(mode="reduce-overhead")`` (CUDA graphs). transformers only
  auto-compiles on CUDA; on CPU the config's ``_compile_all_devices`` is set so it compiles there too;
* ``graph``: not ``generate`` but llem-mlflow's own decode loop (``compile: graph``,
  ``llem_mlflow/backends/decode_loop.py``): a static cache, the prefill once, then each decode step
  (forward + greedy argmax) one replay of a CUDA graph captured in the first call of each batch size
  (warm-up); on CPU the same loop runs uncaptured;
* ``graph+compile`` (CUDA only, not a config value yet): the same loop with the decode step compiled by
  ``torch.compile(mode="default")`` (inductor's fused kernels) before it is captured;
* ``graph+compile-exact`` (CUDA only): the same, with inductor's ``emulate_precision_casts`` on (fused
  kernels round their bf16 intermediates where eager would, to keep eager's numerics). The flag is
  process-wide once set, so list this mode after ``graph+compile``.
* ``graph+compile-tuned`` (CUDA only): the same loop compiled with ``mode="max-autotune-no-cudagraphs"``
  (inductor benchmarks Triton and cuBLAS choices per GEMM shape; we capture the graph ourselves) and
  inductor's ``coordinate_descent_tuning`` (gpt-fast's setting for batch-1 decode). Compiling takes minutes
  at first; the flags are process-wide once set, so list this mode last.

Tokens: every mode's new tokens are compared with eager's of the same model and batch (``= eager``:
``yes``, or the share of equal tokens); greedy decoding of random bf16 weights can flip a near-tie when
the kernels differ (static cache, compiled kernels), so a mismatch is reported, not fatal.

Timing: ``--warmup`` unrecorded calls (compilation and graph capture happen there), then ``--calls``
generate calls, each between two ``torch.cuda.synchronize()`` (on CPU ops are synchronous); ms/step =
median call time / ``--new-tokens`` (prefill included, amortised over the new tokens); tok/s = batch x
new tokens / median call time. Every call generates exactly ``--new-tokens`` tokens
(``min_new_tokens``). A mode that fails records its error in the table instead of stopping the run.

HBM roofline at batch 1 (CUDA only): one decode step must read every weight once, so the fastest possible
step is weight bytes / ``--hbm-bytes-per-s`` (default 4.8e12 B/s, H200); the table gives the achieved %
of that bound (KV-cache and activation traffic ignored, so the true bound is slightly lower).

Targets: the fastest mode >= 4x eager at batch 1 for gpt2, and >= 40 % of the HBM roofline at batch 1 for
the ~1.1B model (TinyLlama shape).

Rerun: ``python benchmarks/backend_efficiency.py`` (CPU: llem/tiny-gpt2, batches 1,8) or
``python benchmarks/backend_efficiency.py --models gpt2,TinyLlama/TinyLlama-1.1B-Chat-v1.0
--batches 1,8,64 --new-tokens 128`` (GPU).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bench_common as bc

from llem_mlflow.backends.catalogue import shipped_config

MODES = (
    "eager",
    "static",
    "static+compile",
    "graph",
    "graph+compile",
    "graph+compile-exact",
    "graph+compile-tuned",
)
#: the decode loop's modes and the torch.compile mode of each (None: the eager step, captured)
GRAPH_COMPILE_MODES: dict[str, str | None] = {
    "graph": None,
    "graph+compile": "default",
    "graph+compile-exact": "default",
    "graph+compile-tuned": "max-autotune-no-cudagraphs",
}
CPU_MODES = ("eager", "static", "static+compile", "graph")  # graph+compile needs CUDA
CPU_MODELS, GPU_MODELS = "llem/tiny-gpt2", "gpt2,TinyLlama/TinyLlama-1.1B-Chat-v1.0"
SPEEDUP_TARGET, ROOFLINE_TARGET_PCT = 4.0, 40.0


@dataclass
class Cell:
    """One (model, batch, mode) measurement, or the error that stopped it."""

    model: str
    batch: int
    mode: str
    call_s: list[float] = field(default_factory=list)
    error: str | None = None
    ms_per_step: float | None = None
    tok_per_s: float | None = None
    speedup_vs_eager: float | None = None
    roofline_pct: float | None = None
    tokens_equal_pct: float | None = None  # share of this mode's new tokens equal to eager's


def build_model(name: str, device: str) -> Any:
    """``name``'s shipped config with random weights, on ``device``: bf16 on CUDA, fp32 on CPU."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    values = shipped_config(name)
    if values is None:
        raise SystemExit(f"{name} has no shipped config in llem_mlflow/models")
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    torch.manual_seed(0)
    auto_model: Any = AutoModelForCausalLM  # untyped vendor API
    with torch.device(device):
        return auto_model.from_config(config, **{key: dtype}).eval()


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters, each tensor counted once (tied weights); buffers are left out."""
    seen, total = set(), 0
    for t in model.parameters():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def generate_kwargs(mode: str, new_tokens: int, device: str, pad_id: int) -> dict[str, Any]:
    """The ``generate`` arguments of one mode (greedy, exactly ``new_tokens`` tokens)."""
    kw: dict[str, Any] = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    kw["pad_token_id"] = pad_id
    if mode == "static":
        kw.update(cache_implementation="static", disable_compile=True)
    elif mode == "static+compile":
        from transformers import CompileConfig

        compile_config: Any = CompileConfig(mode="reduce-overhead")
        if device != "cuda":
            compile_config._compile_all_devices = True  # transformers auto-compiles on CUDA only
        kw.update(cache_implementation="static", compile_config=compile_config)
    return kw


def sync(device: str) -> None:
    """Wait for the device (no-op on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class NullTimer:
    """The decode loop's step timer, doing nothing: every mode is timed per call, as generate() is."""

    def start(self) -> None:
        """Nothing to reset."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        return scores


def graph_call(
    model: Any, ids: Any, new_tokens: int, device: str, compile_mode: str | None
) -> Callable[[], Any]:
    """One call of llem-mlflow's decode loop on ``ids`` (no padding): CUDA graphs on CUDA, plain on CPU."""
    import torch

    from llem_mlflow.backends import decode_loop
    from llem_mlflow.backends.tokens import as_id_set

    eos_ids = sorted(as_id_set(model.generation_config.eos_token_id))  # never chosen, as min_new_tokens does
    eos = torch.tensor(eos_ids, dtype=torch.long, device=ids.device) if eos_ids else None
    width = int(ids.shape[1])
    call = decode_loop.LoopCall(ids, torch.ones_like(ids), new_tokens, width + new_tokens, eos, False)
    if compile_mode is not None and device != "cuda":
        raise RuntimeError("graph+compile captures CUDA graphs: CUDA only")
    graphs = decode_loop.CudaGraphs(ids.device, compile_mode=compile_mode) if device == "cuda" else None
    loop = decode_loop.DecodeLoop(graphs)
    return lambda: loop.run(model, call, NullTimer())


def mode_call(mode: str, model: Any, ids: Any, args: Any, device: str, pad: int) -> Callable[[], Any]:
    """One call of ``mode`` on ``ids``: exactly ``args.new_tokens`` greedy tokens per row."""
    import torch

    if mode == "graph+compile-exact":
        import torch._inductor.config as inductor_config

        inductor_config.emulate_precision_casts = True  # process-wide from here on (see the module docstring)
    if mode == "graph+compile-tuned":
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True  # process-wide from here on
    if mode in GRAPH_COMPILE_MODES:
        return graph_call(model, ids, args.new_tokens, device, GRAPH_COMPILE_MODES[mode])
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    kw = generate_kwargs(mode, args.new_tokens, device, pad)
    mask = torch.ones_like(ids)
    return lambda: model.generate(ids, attention_mask=mask, **kw)


def time_mode(
    call: Callable[[], Any], want: int, warmup: int, calls: int, device: str
) -> tuple[list[float], Any]:
    """Seconds of ``calls`` synced calls after ``warmup`` unrecorded ones, and the last call's ids."""
    import torch

    times, out = [], None
    with torch.inference_mode():
        for i in range(warmup + calls):
            sync(device)
            t0 = time.perf_counter()
            out = call()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            if out.shape[1] != want:
                raise RuntimeError(f"generated {out.shape[1]} ids (prompt included), not {want}")
    return times, out


def equal_pct(out: Any, reference: Any, new_tokens: int) -> float:
    """Share (%) of the new tokens in ``out`` equal to ``reference``'s, position by position."""
    same = out[:, -new_tokens:] == reference[:, -new_tokens:]
    return 100.0 * float(same.float().mean())


def one_error_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 160 characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


def measure_model(name: str, args: Any, device: str) -> tuple[list[Cell], int]:
    """Every (batch, mode) cell of one model; returns (cells, weight bytes)."""
    import torch

    model = build_model(name, device)
    wbytes = weight_bytes(model)
    pad = int(getattr(model.config, "eos_token_id", None) or 0)
    vocab = int(model.config.vocab_size)
    cells = []
    for batch in args.batches:
        gen = torch.Generator().manual_seed(batch)
        ids = torch.randint(1, vocab - 1, (batch, args.prompt_len), generator=gen).to(device)
        eager_out = None
        for mode in args.modes:
            cell, out = measure_cell(Cell(name, batch, mode), model, ids, args, pad)
            if mode == "eager":
                eager_out = out
            elif out is not None and eager_out is not None:
                cell.tokens_equal_pct = equal_pct(out, eager_out, args.new_tokens)
            fill(cell, args, wbytes, device)
            cells.append(cell)
            print(describe(cell), flush=True)
    del model
    gc.collect()
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()
    return cells, wbytes


def measure_cell(cell: Cell, model: Any, ids: Any, args: Any, pad: int) -> tuple[Cell, Any]:
    """Time one (model, batch, mode) cell; returns it and the last call's ids (None when it failed)."""
    import torch

    warmup = args.warmup + (1 if cell.mode == "static+compile" else 0)  # graph modes capture in their first
    want = int(ids.shape[1]) + args.new_tokens
    try:
        call = mode_call(cell.mode, model, ids, args, args.device, pad)
        cell.call_s, out = time_mode(call, want, warmup, args.calls, args.device)
    except Exception as exc:  # record and go on: one mode failing must not hide the others
        cell.error = one_error_line(exc)
        torch._dynamo.reset()
        return cell, None
    return cell, out


def fill(cell: Cell, args: Any, wbytes: int, device: str) -> None:
    """ms/step, tok/s and roofline % of a measured cell."""
    if not cell.call_s:
        return
    median = statistics.median(cell.call_s)
    cell.ms_per_step = 1000 * median / args.new_tokens
    cell.tok_per_s = cell.batch * args.new_tokens / median
    if device == "cuda" and cell.batch == 1:
        cell.roofline_pct = 100 * (1000 * wbytes / args.hbm_bytes_per_s) / cell.ms_per_step


def add_speedups(cells: list[Cell]) -> None:
    """Each cell's speed-up over eager at the same model and batch."""
    eager = {(c.model, c.batch): c.ms_per_step for c in cells if c.mode == "eager"}
    for c in cells:
        base = eager.get((c.model, c.batch))
        if base and c.ms_per_step:
            c.speedup_vs_eager = base / c.ms_per_step


def describe(c: Cell) -> str:
    """One progress line."""
    if c.error:
        return f"{c.model} b{c.batch} {c.mode}: FAILED {c.error}"
    same = "" if c.tokens_equal_pct is None else f", {c.tokens_equal_pct:.1f} % of tokens = eager"
    return f"{c.model} b{c.batch} {c.mode}: {c.ms_per_step:.2f} ms/step, {c.tok_per_s:.0f} tok/s{same}"


def row(c: Cell) -> list[Any]:
    """A table row."""

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    if c.error:
        return [c.model, c.batch, c.mode, "ERROR", c.error, "", "", ""]
    same = (
        "-"
        if c.tokens_equal_pct is None
        else "yes"
        if c.tokens_equal_pct == 100.0
        else f"{c.tokens_equal_pct:.1f} %"
    )
    return [
        c.model,
        c.batch,
        c.mode,
        num(c.ms_per_step, ".2f"),
        num(c.tok_per_s, ".0f"),
        num(c.speedup_vs_eager, ".2f"),
        num(c.roofline_pct, ".1f"),
        same,
    ]


def _tokens(c: Cell) -> str:
    if c.tokens_equal_pct is None:
        return "tokens not compared"
    return (
        "tokens = eager"
        if c.tokens_equal_pct == 100.0
        else f"only {c.tokens_equal_pct:.1f} % of tokens = eager"
    )


def _verdict(what: str, cells: list[Cell], score: str, target: float, unit: str) -> list[str]:
    """The best cell by ``score`` (an attribute), and the best whose tokens are all eager's, vs ``target``."""
    lines = []
    identical = [c for c in cells if c.tokens_equal_pct == 100.0]
    for label, pool in (("fastest mode", cells), ("fastest with tokens = eager", identical)):
        if not pool:
            lines.append(f"{what}: {label}: none")
            continue
        best = max(pool, key=lambda c: getattr(c, score) or 0.0)
        value = getattr(best, score) or 0.0
        ok = "meets" if value >= target else "MISSES"
        lines.append(
            f"{what}: {label} {best.mode} {value:.2f}{unit}, {_tokens(best)} ({ok} target >= {target}{unit})"
        )
    return lines


def verdicts(cells: list[Cell], device: str) -> list[str]:
    """The two target checks, where the models ran: the best mode, and the best with eager's tokens."""
    out = []
    b1 = [c for c in cells if c.batch == 1 and c.ms_per_step and c.mode != "eager"]
    gpt2 = [c for c in b1 if c.model in ("gpt2", "openai-community/gpt2") and c.speedup_vs_eager]
    if gpt2:
        out += _verdict("gpt2 batch 1", gpt2, "speedup_vs_eager", SPEEDUP_TARGET, "x eager")
    llama = [c for c in b1 if "TinyLlama" in c.model and c.roofline_pct]
    if llama:
        out += _verdict("~1.1B batch 1", llama, "roofline_pct", ROOFLINE_TARGET_PCT, " % of HBM roofline")
    if device != "cuda":
        out.append("CPU run: no roofline; targets apply to the H200 run")
    return out


def parse_args() -> Any:
    """Flags, with CPU or GPU defaults depending on whether CUDA is present."""
    import torch

    cuda = torch.cuda.is_available()
    p = bc.parser(__doc__, "backend_efficiency.json")
    p.add_argument(
        "--models", default=GPU_MODELS if cuda else CPU_MODELS, help="comma list of shipped models"
    )
    p.add_argument("--batches", default="1,8,64" if cuda else "1,8", help="comma list of batch sizes")
    p.add_argument(
        "--modes", default=",".join(MODES if cuda else CPU_MODES), help=f"comma list of {', '.join(MODES)}"
    )
    p.add_argument("--new-tokens", type=int, default=128 if cuda else 16, help="new tokens per call")
    p.add_argument("--prompt-len", type=int, default=32 if cuda else 16, help="prompt tokens per row")
    p.add_argument(
        "--warmup", type=int, default=2 if cuda else 1, help="unrecorded calls per cell (+1 with compile)"
    )
    p.add_argument("--calls", type=int, default=5 if cuda else 3, help="timed calls per cell")
    p.add_argument("--hbm-bytes-per-s", type=float, default=4.8e12, help="HBM bandwidth (H200: 4.8e12)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = p.parse_args()
    args.models = args.models.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.modes = args.modes.split(",")
    args.device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    return args


def report(args: Any, cells: list[Cell], wbytes: dict[str, int], done: bool) -> None:
    """Print the table (when ``done``) and write the JSON (also after each model, in case of a timeout)."""
    add_speedups(cells)
    title = f"Decode efficiency on {args.device} ({args.new_tokens} new tokens, prompt {args.prompt_len})"
    headers = ["model", "batch", "mode", "ms/step", "tok/s", "x eager", "% HBM roofline (b1)", "= eager"]
    rows = [row(c) for c in cells]
    text = bc.show(title, headers, rows) if done else f"{title}\n{bc.table(headers, rows)}"
    lines = verdicts(cells, args.device)
    lines += [
        f"{m}: {b / 1e6:.1f} MB of weights -> roofline {1000 * b / args.hbm_bytes_per_s:.3f} ms/step"
        for m, b in wbytes.items()
        if args.device == "cuda"
    ]
    if done:
        print("\n".join(lines))
    payload = {
        "complete": done,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "weight_bytes": wbytes,
        "cells": [vars(c) for c in cells],
        "verdicts": lines,
        "table": text + "\n" + "\n".join(lines),
    }
    bc.write_json(args.out, "backend_efficiency", payload)


def main() -> None:
    """Measure every model, print the table and write the JSON."""
    bc.quiet_env()
    args = parse_args()
    cells: list[Cell] = []
    wbytes: dict[str, int] = {}
    for i, name in enumerate(args.models):
        model_cells, wbytes[name] = measure_model(name, args, args.device)
        cells += model_cells
        report(args, cells, wbytes, done=i == len(args.models) - 1)


if __name__ == "__main__":
    main()
