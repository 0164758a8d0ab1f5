"""The workloads of the sampler overhead benchmark (``sampler_overhead.py``) and the devices it samples:
the CPU workload and the GPU ones (``matmul``, ``launch``, ``decode``), the calibration of a run's length,
the fake or NVML devices, and the facts about each GPU's power sample buffer found before measuring."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import bench_common as bc

from llem_mlflow.measure.power_buffer import open_buffer
from llem_mlflow.protocols import CudaDeviceId, GpuDevice

Workload = Callable[[int], None]  # runs the workload for n iterations, synced at the end


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


def decode_workload(batch: int) -> Workload:
    """gpt2 (random weights, bf16, eager, dynamic cache) at ``batch``: n generate calls of 32 new tokens."""
    import torch
    from backend_efficiency import build_model

    model = build_model("gpt2", "cuda")
    ids = torch.randint(0, 50000, (batch, 32), device="cuda")
    kw = {"max_new_tokens": 32, "min_new_tokens": 32, "do_sample": False, "pad_token_id": 0}

    def run(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        torch.cuda.synchronize()

    return run


def build_workload(name: str, torch_threads: int) -> Workload:
    """The named workload, ready to run (``decode_b<batch>``: decode at that batch size)."""
    if name.startswith("decode_b"):
        return decode_workload(int(name.removeprefix("decode_b")))
    makers: dict[str, Callable[[], Workload]] = {
        "cpu": lambda: cpu_workload(torch_threads),
        "matmul": matmul_workload,
        "launch": launch_workload,
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
    """``count`` FakeDevice objects: constant power, polled or from a live buffer (a sample every 20 ms)."""
    bc.repo_on_path()
    from tests.fakes import FakeDevice, FakePowerBuffer

    return [
        FakeDevice(
            cuda_index=i,
            uuid=f"GPU-fake-{i}",
            power_w=150.0 + i,
            power_buffer=FakePowerBuffer.live(150.0 + i),
        )
        for i in range(count)
    ]


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


# ------------------------------------------------------------------------------------- the buffer


def median_call_s(call: Callable[[], Any], calls: int = 50) -> float | None:
    """Median wall seconds of ``call`` over ``calls`` calls; None when it raises."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        try:
            call()
        except Exception:
            return None
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def buffer_facts(devices: Sequence[GpuDevice]) -> list[dict[str, Any]]:
    """Per GPU: can the buffer be used, on which clock, its newest sample's age, spacing, depth, costs."""
    facts = []
    for device in devices:
        opened = open_buffer(device, time.time)
        fact: dict[str, Any] = {"gpu": device.info.cuda_index, "poll_call_s": median_call_s(device.power_w)}
        if isinstance(opened, str):
            facts.append({**fact, "usable": False, "why": opened})
            continue
        buffer, (newest_s, _) = opened
        facts.append(
            {
                **fact,
                "usable": True,
                "clock": buffer.clock_name,
                "newest_sample_age_s": time.time() - newest_s,
                "spacing_s": buffer.spacing_s,
                "depth_s": buffer.depth_s,
                "read_all_call_s": median_call_s(partial(device.power_samples, 0)),
                "read_new_call_s": median_call_s(buffer.read),
            }
        )
    return facts


def show_facts(facts: list[dict[str, Any]]) -> None:
    """Print what ``buffer_facts`` found."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.3f} ms"

    for f in facts:
        head = f"GPU {f['gpu']}: power poll {ms(f['poll_call_s'])} a call; buffer"
        if not f["usable"]:
            print(f"{head} NOT usable: {f['why']}")
            continue
        print(
            f"{head} on {f['clock']}, newest sample {ms(f['newest_sample_age_s'])} old, spacing "
            f"{ms(f['spacing_s'])}, depth {f['depth_s']:.2f} s, a read of all {ms(f['read_all_call_s'])}, "
            f"of the new ones {ms(f['read_new_call_s'])}"
        )
