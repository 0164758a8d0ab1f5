"""Sampler overhead: how much slower a fixed workload runs while the PowerSampler thread samples.

Runs ``--pairs`` interleaved pairs (ABBA order: on/off, off/on, on/off, ...) of one workload, each run
timed with ``time.perf_counter``; the sampler is started before and stopped after the timed region, so
only its effect *during* the work is measured. Reported per workload: the median of the paired ratios
``time(on) / time(off)`` with quartiles and min/max (overhead % = ratio - 1), and the sampler thread's
CPU time as % of one core. That CPU time is read inside the sampler thread itself: the benchmark runs a
subclass whose ``_run`` brackets the product's sampling loop with ``time.thread_time()`` (the ``start()``
and ``stop()`` samples, taken in the caller's thread outside the timed region, are not included). The
process CPU time difference on - off is reported beside it, as a cross-check that includes GIL effects.

* CPU (default): the workload is a pure-Python loop interleaved with small torch matmuls, and the sampler
  reads ``tests.fakes.FakeDevice`` objects. This measures thread wake-up and GIL contention only, not
  NVML read cost.
* GPU (``--gpu``): real ``NvmlDevice`` objects opened through ``llem_mlflow.measure.device`` (as
  ``runner._nvml_gpus`` does), and the workloads ``matmul`` (GPU-bound: large bf16 matmuls),
  ``launch`` (launch-bound: many tiny kernels from a Python loop) and ``decode`` (gpt2 with random
  weights, batch 1, eager ``generate``: a real launch-bound decode).

Targets: median ratio <= 1.005 (throughput ratio off/on >= 0.995, overhead <= 0.5 %) and sampler CPU
< 1 % of one core.

Rerun: ``python benchmarks/sampler_overhead.py`` (CPU) or
``python benchmarks/sampler_overhead.py --gpu --pairs 12 --run-s 0.5`` (GPU host).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import bench_common as bc

from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.protocols import CudaDeviceId, GpuDevice

TARGET_RATIO = 1.005
TARGET_CORE_PCT = 1.0
Workload = Callable[[int], None]  # runs the workload for n iterations, synced at the end


class TimedSampler(PowerSampler):
    """The product sampler, with the CPU time of its thread's loop measured inside that thread."""

    thread_cpu_s: float = 0.0

    def _run(self) -> None:
        t0 = time.thread_time()
        try:
            super()._run()
        finally:
            self.thread_cpu_s = time.thread_time() - t0


@dataclass
class Run:
    """One timed run of a workload."""

    sampler_on: bool
    wall_s: float
    process_cpu_s: float
    sampler_cpu_s: float | None = None
    samples: int | None = None


# ------------------------------------------------------------------------------------- workloads


def cpu_workload(torch_threads: int) -> Workload:
    """Pure-Python arithmetic interleaved with 128x128 fp32 torch matmuls."""
    import torch

    torch.set_num_threads(torch_threads)
    a = torch.randn(128, 128, generator=torch.Generator().manual_seed(0))

    def run(n: int) -> None:
        acc = 0
        for i in range(n):
            (a @ a).sum()
            acc += sum(j * j for j in range(100 + i % 7))

    return run


def matmul_workload() -> Workload:
    """GPU-bound: 8192x8192 bf16 matmuls, one sync at the end."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def run(n: int) -> None:
        for _ in range(n):
            torch.mm(a, a)
        torch.cuda.synchronize()

    return run


def launch_workload() -> Workload:
    """Launch-bound: three tiny kernels per Python iteration on a 64-element tensor, one sync at the end."""
    import torch

    x0 = torch.ones(64, device="cuda")

    def run(n: int) -> None:
        x = x0.clone()
        for _ in range(n):
            x = x.mul(0.999).add_(1e-3).relu_()
        torch.cuda.synchronize()

    return run


def decode_workload() -> Workload:
    """gpt2 (random weights, bf16, eager, dynamic cache), batch 1: n generate calls of 32 new tokens."""
    import torch
    from backend_efficiency import build_model

    model = build_model("gpt2", "cuda")
    ids = torch.randint(0, 50000, (1, 32), device="cuda")
    kw = {"max_new_tokens": 32, "min_new_tokens": 32, "do_sample": False, "pad_token_id": 0}

    def run(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        torch.cuda.synchronize()

    return run


def build_workload(name: str, torch_threads: int) -> Workload:
    """The named workload, ready to run."""
    makers: dict[str, Callable[[], Workload]] = {
        "cpu": lambda: cpu_workload(torch_threads),
        "matmul": matmul_workload,
        "launch": launch_workload,
        "decode": decode_workload,
    }
    return makers[name]()


def calibrate(work: Workload, target_s: float) -> int:
    """Iterations that make one run last about ``target_s`` (after a warm-up run)."""
    work(1)
    n = 1
    while True:
        took = bc.timed(partial(work, n))
        if took >= min(0.05, target_s / 4) or n >= 1 << 24:
            return max(1, round(n * target_s / max(took, 1e-9)))
        n *= 4


# --------------------------------------------------------------------------------------- devices


def fake_devices(count: int) -> list[GpuDevice]:
    """``count`` FakeDevice objects (constant power, default slow readings)."""
    bc.repo_on_path()
    from tests.fakes import FakeDevice

    return [FakeDevice(cuda_index=i, uuid=f"GPU-fake-{i}", power_w=150.0 + i) for i in range(count)]


def cuda_device_id(index: int) -> CudaDeviceId:
    """How torch sees CUDA device ``index``, spelled as NVML spells UUID and PCI bus id."""
    import torch

    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    text = None if uuid is None else str(uuid)
    if text is not None and not text.startswith(("GPU-", "MIG-")):
        text = f"GPU-{text}"
    bus, dev = getattr(props, "pci_bus_id", None), getattr(props, "pci_device_id", None)
    domain = int(getattr(props, "pci_domain_id", 0) or 0)
    pci = None if bus is None or dev is None else f"{domain:08X}:{int(bus):02X}:{int(dev):02X}.0"
    return CudaDeviceId(index, text, pci)


def nvml_devices(count: int) -> tuple[list[GpuDevice], Callable[[], None]]:
    """NvmlDevice objects for CUDA devices 0..count-1, matched by UUID/PCI as ``runner._nvml_gpus`` does."""
    from llem_mlflow.measure.device import NvmlSession

    ids = [cuda_device_id(index) for index in range(count)]
    session = NvmlSession.open()
    return list(session.devices_for(ids)), session.close


# ------------------------------------------------------------------------------------- measuring


def one_run(work: Workload, n: int, devices: Sequence[GpuDevice] | None, interval_s: float) -> Run:
    """Time ``work(n)``, with the sampler running over ``devices`` when given."""
    gc.collect()
    sampler = TimedSampler(devices, interval_s) if devices is not None else None
    if sampler is not None:
        sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    work(n)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if sampler is None:
        return Run(False, wall, cpu)
    trace = sampler.stop()
    return Run(True, wall, cpu, sampler.thread_cpu_s, len(trace.samples))


def abba(work: Workload, n: int, devices: Sequence[GpuDevice], interval_s: float, pairs: int) -> list[Run]:
    """``pairs`` pairs in ABBA order (on/off, off/on, ...), after one unrecorded run of each."""
    one_run(work, n, devices, interval_s)
    one_run(work, n, None, interval_s)
    runs: list[Run] = []
    for k in range(pairs):
        order = (devices, None) if k % 2 == 0 else (None, devices)
        runs += [one_run(work, n, d, interval_s) for d in order]
    return runs


def summarize(name: str, runs: list[Run], n: int, interval_s: float, n_devices: int) -> dict[str, Any]:
    """Paired ratios and sampler CPU for one workload."""
    on = [r for r in runs if r.sampler_on]
    off = [r for r in runs if not r.sampler_on]
    ratios = [a.wall_s / b.wall_s for a, b in zip(on, off, strict=True)]
    core_pct = [100 * (r.sampler_cpu_s or 0.0) / r.wall_s for r in on]
    proc_pct = [100 * (a.process_cpu_s - b.process_cpu_s) / a.wall_s for a, b in zip(on, off, strict=True)]
    rate = [max(0, (r.samples or 0) - 2 * n_devices) / n_devices / r.wall_s for r in on]  # less start/stop
    ratio = bc.spread(ratios)
    return {
        "workload": name,
        "iterations_per_run": n,
        "interval_s": interval_s,
        "devices": n_devices,
        "run_s_median": statistics.median(r.wall_s for r in off),
        "ratio_on_off": ratio,
        "overhead_pct_median": 100 * (ratio["median"] - 1),
        "throughput_ratio_off_on_median": 1 / ratio["median"],
        "sampler_thread_core_pct": bc.spread(core_pct),
        "process_cpu_diff_core_pct": bc.spread(proc_pct),
        "samples_per_s_per_device_median": statistics.median(rate),
        "meets_ratio_target": ratio["median"] <= TARGET_RATIO,
        "meets_cpu_target": statistics.median(core_pct) < TARGET_CORE_PCT,
        "runs": [asdict(r) for r in runs],
    }


def row(s: dict[str, Any]) -> list[Any]:
    """One table row of a workload summary."""
    r, c, p = s["ratio_on_off"], s["sampler_thread_core_pct"], s["process_cpu_diff_core_pct"]
    ok = "yes" if s["meets_ratio_target"] and s["meets_cpu_target"] else "NO"
    return [
        s["workload"],
        r["n"],
        f"{s['run_s_median']:.3f}",
        f"{r['median']:.4f}",
        f"{r['q1']:.4f}-{r['q3']:.4f}",
        f"{r['min']:.4f}-{r['max']:.4f}",
        f"{s['overhead_pct_median']:+.2f}",
        f"{c['median']:.3f} (max {c['max']:.3f})",
        f"{p['median']:+.2f}",
        f"{s['samples_per_s_per_device_median']:.1f}",
        ok,
    ]


HEADERS = [
    "workload",
    "pairs",
    "run s",
    "ratio on/off",
    "IQR",
    "min-max",
    "overhead %",
    "sampler thread % core",
    "proc CPU diff % core",
    "samples/s/dev",
    "meets target",
]


def main() -> None:
    """Parse flags, run every workload, print the table and write the JSON."""
    bc.quiet_env()
    p = bc.parser(__doc__, "sampler_overhead.json")
    p.add_argument("--gpu", action="store_true", help="real NVML devices and GPU workloads")
    p.add_argument("--workloads", help="comma list (default: cpu; with --gpu: matmul,launch,decode)")
    p.add_argument("--pairs", type=int, default=10, help="on/off pairs per workload (default 10)")
    p.add_argument("--run-s", type=float, default=0.25, help="target seconds per run (default 0.25)")
    p.add_argument("--interval-s", type=float, default=0.015, help="sampling interval (product default)")
    p.add_argument("--devices", type=int, default=1, help="devices the sampler reads (default 1)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads of the cpu workload")
    args = p.parse_args()
    names = (args.workloads or ("matmul,launch,decode" if args.gpu else "cpu")).split(",")
    devices, close = nvml_devices(args.devices) if args.gpu else (fake_devices(args.devices), _nothing)
    try:
        summaries = [measure(name, devices, args) for name in names]
    finally:
        close()
    title = f"Sampler overhead ({'NVML' if args.gpu else 'FakeDevice'}, interval {args.interval_s} s)"
    text = bc.show(title, HEADERS, [row(s) for s in summaries])
    bc.write_json(
        args.out,
        "sampler_overhead",
        {"mode": "gpu" if args.gpu else "cpu", "table": text, "workloads": summaries},
    )


def _nothing() -> None:
    pass


def measure(name: str, devices: Sequence[GpuDevice], args: Any) -> dict[str, Any]:
    """Build, calibrate and measure one workload."""
    work = build_workload(name, args.torch_threads)
    n = calibrate(work, args.run_s)
    print(f"{name}: {n} iterations per run, {args.pairs} pairs", flush=True)
    runs = abba(work, n, devices, args.interval_s, args.pairs)
    return summarize(name, runs, n, args.interval_s, len(devices))


if __name__ == "__main__":
    main()
