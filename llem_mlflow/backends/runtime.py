"""The torch runtime: which packages are installed, the device and precision, CUDA device identities.

Owns ``cuda_available``, ``backend_versions``, ``resolve_device``/``resolve_precision`` (what ``auto``
becomes), the torch dtype of a precision (and the ``dtype=``/``torch_dtype=`` spelling of the installed
transformers), ``cuda_device_ids`` (the GPUs holding a model, as NVML spells them), and ``CudaStart``: the
CUDA context, cuBLAS handles and two small GEMMs started in a background thread while the model loads
(``warm_cuda``), so the first warm-up batch does not pay them. torch is imported lazily, inside functions.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

from llem_mlflow.errors import BackendError, OutOfMemoryError
from llem_mlflow.protocols import CudaDeviceId

PRECISIONS = ("fp32", "fp16", "bf16")


def cuda_available() -> bool:
    """True when torch is installed and sees at least one CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def backend_versions() -> dict[str, str | None]:
    """torch, transformers and CUDA runtime versions (None for what is not installed)."""
    cuda_runtime: str | None = None
    try:
        import torch

        cuda_runtime = torch.version.cuda
    except ImportError:
        pass
    return {
        "torch": _package_version("torch"),
        "transformers": _package_version("transformers"),
        "cuda_runtime": cuda_runtime,
    }


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    available = cuda_available()
    if requested == "cuda" and not available:
        raise BackendError(
            "device=cuda was requested but torch sees no CUDA device (CPU-only torch build, no GPU, "
            "or CUDA_VISIBLE_DEVICES hides it); install a CUDA build of torch or use device=cpu"
        )
    return "cuda" if available else "cpu"


def resolve_precision(requested: str | None, device: str) -> str:
    if requested not in (None, "auto"):
        return requested
    if device == "cpu":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``dtype=`` on transformers >= 4.56, ``torch_dtype=`` before."""
    version = _major_minor(_package_version("transformers") or "0")
    return {"dtype": dtype} if version >= (4, 56) else {"torch_dtype": dtype}


def _major_minor(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def _nvml_uuid(raw: Any) -> str | None:
    if raw is None:
        return None
    text = str(raw)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _pci_bus_id(props: Any) -> str | None:
    bus = getattr(props, "pci_bus_id", None)
    dev = getattr(props, "pci_device_id", None)
    if bus is None or dev is None:
        return None
    domain = getattr(props, "pci_domain_id", 0) or 0
    return f"{int(domain):08X}:{int(bus):02X}:{int(dev):02X}.0"


def cuda_device_ids(model: Any) -> list[CudaDeviceId]:
    """The CUDA devices holding ``model``'s parameters, identified as NVML spells them."""
    import torch

    indices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    ids = []
    for index in indices:
        props = torch.cuda.get_device_properties(index)
        ids.append(CudaDeviceId(index, _nvml_uuid(getattr(props, "uuid", None)), _pci_bus_id(props)))
    return ids


def free_memory() -> None:
    """After the last reference to a model is dropped (``del``): collect it and return cached CUDA memory.

    The sweep calls this between models, so the next one loads into freed GPU memory.
    """
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")  # no torch imported: nothing of torch's to free
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA), torch's CPU allocator failing, or Python's ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if isinstance(oom, type) and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)


def out_of_memory_error(
    detail: str, device: str, batch_size: int, input_tokens: int, output_tokens: int
) -> OutOfMemoryError:
    """The one-line error for a ``generate()`` that ran out of memory: the batch, the tokens, what to lower.

    ``detail``: the original message (torch's spans a paragraph; its first facts are kept).
    ``input_tokens``: the batch's padded prompt width.
    """
    what = "GPU memory" if device == "cuda" else "memory"
    smaller = f"try --batch-size {batch_size // 2}, or " if batch_size > 1 else "try "
    return OutOfMemoryError(
        f"out of {what} at batch_size {batch_size} ({input_tokens} prompt tokens + max_output_tokens "
        f"{output_tokens} per row) on {device}: {_memory_facts(detail)}; {smaller}fewer max_input_tokens or "
        "max_output_tokens (a lower precision, or device_map over several GPUs, also needs less per GPU)"
    )


def _memory_facts(detail: str) -> str:
    """``Tried to allocate 2.00 GiB; GPU 0 has 1.50 GiB free of 79.19 GiB`` from torch's text."""
    flat = " ".join(detail.split())
    facts = [m.group(0).rstrip(".") for m in re.finditer(r"Tried to allocate \S+ \S+", flat)]
    free = re.search(r"(GPU \d+) has a total capacity of (\S+ \S+) of which (\S+ \S+) is free", flat)
    if free:
        facts.append(f"{free.group(1)} has {free.group(3)} free of {free.group(2)}")
    if facts:
        return "; ".join(facts)
    return flat if len(flat) <= 160 else flat[:157] + "..."


def visible_cuda_ids() -> list[CudaDeviceId]:
    """Every CUDA device this process sees, identified as NVML spells them; [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    ids = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        ids.append(CudaDeviceId(index, _nvml_uuid(getattr(props, "uuid", None)), _pci_bus_id(props)))
    return ids


def synchronize_all() -> None:
    """Wait for queued work on every CUDA device, if this process has started CUDA (never starts it)."""
    import torch

    cuda: Any = torch.cuda  # is_initialized is untyped
    if cuda.is_available() and cuda.is_initialized():
        for index in range(cuda.device_count()):
            cuda.synchronize(index)


#: How long ``CudaStart.wait`` waits for the background CUDA start-up before the run goes on without it.
CUDA_START_WAIT_S = 60.0


class CudaStart:
    """``work`` (``warm_cuda``) in a daemon thread, started now; ``wait()`` joins it.

    ``wait()`` returns None when the work ended, else one line saying why not (it raised, or it still ran
    after ``timeout_s``). A failure is reported, never raised: the load and the first warm-up batch start
    CUDA themselves anyway, and pay the start-up as they did before.
    """

    def __init__(self, work: Callable[[], None], name: str = "llem-cuda-start") -> None:
        self._failure: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # reported by wait(), never raised: the run starts CUDA itself anyway
            self._failure.append(" ".join(f"{type(exc).__name__}: {exc}".split())[:300])

    def wait(self, timeout_s: float = CUDA_START_WAIT_S) -> str | None:
        """Join the thread (at most ``timeout_s``); None when the work ended well, else why not."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return f"the background CUDA start-up was still running after {timeout_s:g} s; measuring anyway"
        if self._failure:
            return f"the background CUDA start-up failed ({self._failure[0]}); the run started CUDA itself"
        return None


def warm_cuda(precision: str | None) -> None:
    """Start CUDA on the current device: its context, the cuBLAS and cuBLASLt handles and their workspace,
    and two 64 x 64 GEMMs (plain and with a bias, as linear layers call them) in the run's precision.

    Nothing happens where torch sees no CUDA device. Only ones and zeros: no random number is drawn, so the
    seeded weights the load builds are the same as without it. torch keeps cuBLAS handles in a pool that a
    thread gives back when it ends, so the main thread's first matmul takes the handle made here.
    """
    import torch

    if not torch.cuda.is_available():
        return
    dtype = torch_dtype(resolve_precision(precision, "cuda"))
    a = torch.ones((64, 64), device="cuda", dtype=dtype)
    bias = torch.zeros(64, device="cuda", dtype=dtype)
    (a @ a + torch.addmm(bias, a, a)).sum().item()  # .item() waits for both GEMMs
