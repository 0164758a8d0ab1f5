"""Backend efficiency: decode ms/step and tok/s of plain transformers ``generate`` in three modes.

For each model (random weights from llem-mlflow's shipped configs, built with
``AutoModelForCausalLM.from_config`` on the device: bf16 on CUDA, fp32 on CPU) and each batch size, every
mode runs beside eager in the same process:

* ``eager``: dynamic cache, no compilation;
* ``static``: ``cache_implementation="static"`` with ``disable_compile=True`` (static cache alone);
* ``static+compile``: static cache and transformers' automatic compilation of the forward pass in
  ``generate`` with ``CompileConfig(mode="reduce-overhead")`` (CUDA graphs). transformers only
  auto-compiles on CUDA; on CPU the config's ``_compile_all_devices`` is set so it compiles there too.

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
from dataclasses import dataclass, field
from typing import Any

import bench_common as bc

from llem_mlflow.backends.catalogue import shipped_config

MODES = ("eager", "static", "static+compile")
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


def time_mode(model: Any, ids: Any, kw: dict[str, Any], warmup: int, calls: int, device: str) -> list[float]:
    """Seconds of ``calls`` synced generate calls after ``warmup`` unrecorded ones."""
    import torch

    mask = torch.ones_like(ids)
    want = ids.shape[1] + kw["max_new_tokens"]
    times = []
    with torch.inference_mode():
        for i in range(warmup + calls):
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, **kw)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            if out.shape[1] != want:
                raise RuntimeError(
                    f"generated {out.shape[1] - ids.shape[1]} tokens, not {kw['max_new_tokens']}"
                )
    return times


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
        for mode in args.modes:
            cell = Cell(name, batch, mode)
            warmup = args.warmup + (1 if mode == "static+compile" else 0)
            try:
                kw = generate_kwargs(mode, args.new_tokens, device, pad)
                cell.call_s = time_mode(model, ids, kw, warmup, args.calls, device)
            except Exception as exc:  # record and go on: one mode failing must not hide the others
                cell.error = one_error_line(exc)
                torch._dynamo.reset()
            fill(cell, args, wbytes, device)
            cells.append(cell)
            print(describe(cell), flush=True)
    del model
    gc.collect()
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()
    return cells, wbytes


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
    return f"{c.model} b{c.batch} {c.mode}: {c.ms_per_step:.2f} ms/step, {c.tok_per_s:.0f} tok/s"


def row(c: Cell) -> list[Any]:
    """A table row."""

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    if c.error:
        return [c.model, c.batch, c.mode, "ERROR", c.error, "", ""]
    return [
        c.model,
        c.batch,
        c.mode,
        num(c.ms_per_step, ".2f"),
        num(c.tok_per_s, ".0f"),
        num(c.speedup_vs_eager, ".2f"),
        num(c.roofline_pct, ".1f"),
    ]


def verdicts(cells: list[Cell], device: str) -> list[str]:
    """The two target checks, where the models ran."""
    out = []
    b1 = [c for c in cells if c.batch == 1 and c.ms_per_step]
    gpt2 = [
        c.speedup_vs_eager for c in b1 if c.model in ("gpt2", "openai-community/gpt2") and c.speedup_vs_eager
    ]
    if gpt2:
        ok = "meets" if max(gpt2) >= SPEEDUP_TARGET else "MISSES"
        out.append(f"gpt2 batch 1: fastest mode {max(gpt2):.2f}x eager ({ok} target >= {SPEEDUP_TARGET}x)")
    llama = [c.roofline_pct for c in b1 if "TinyLlama" in c.model and c.roofline_pct]
    if llama:
        ok = "meets" if max(llama) >= ROOFLINE_TARGET_PCT else "MISSES"
        out.append(
            f"~1.1B batch 1: best {max(llama):.1f} % of HBM roofline ({ok} target >= {ROOFLINE_TARGET_PCT} %)"
        )
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
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
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
    headers = ["model", "batch", "mode", "ms/step", "tok/s", "x eager", "% HBM roofline (b1)"]
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
