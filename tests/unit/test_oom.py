"""Out of memory while generating: one clear error, the memory returned, the model released, no files.

On the CPU: a real tiny model (``llem/tiny-gpt2``, random weights) whose ``generate`` raises what torch
raises on a GPU (``torch.cuda.OutOfMemoryError``) for batches above a size, and fakes for the runner.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from llem_mlflow.backends import hf
from llem_mlflow.backends.runtime import is_out_of_memory, out_of_memory_error
from llem_mlflow.cli import app as cli
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import BackendError, OutOfMemoryError
from llem_mlflow.protocols import BatchStats
from llem_mlflow.run import execute as runner
from tests.fakes import FakeBackend

#: What torch 2.x says on an H100/H200 (one paragraph).
TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
    "1.50 GiB is free. Including non-PyTorch memory, this process has 77.68 GiB memory in use. Of the "
    "allocated memory 75.10 GiB is allocated by PyTorch, and 1.90 GiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
    "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
TINY = [
    *("--model", "llem/tiny-gpt2", "--weights", "random", "--device", "cpu", "--n", "4"),
    *("--max-input-tokens", "4", "--max-output-tokens", "2", "--baseline-s", "0"),
]


# ---------------------------------------------------------------- the error itself


def test_the_message_names_the_batch_the_tokens_and_a_smaller_batch() -> None:
    err = out_of_memory_error(TORCH_OOM, "cuda", 64, 128, 256)
    text = str(err)
    assert isinstance(err, OutOfMemoryError) and isinstance(err, BackendError)
    assert text.startswith("out of GPU memory at batch_size 64 (128 prompt tokens + max_output_tokens 256")
    assert "Tried to allocate 2.00 GiB; GPU 0 has 1.50 GiB free of 79.19 GiB" in text
    assert "try --batch-size 32, or fewer max_input_tokens or max_output_tokens" in text
    assert "\n" not in text and "PYTORCH_CUDA_ALLOC_CONF" not in text


def test_at_batch_size_1_only_fewer_tokens_are_suggested() -> None:
    text = str(out_of_memory_error("DefaultCPUAllocator: can't allocate memory", "cpu", 1, 8, 8))
    assert text.startswith("out of memory at batch_size 1 (8 prompt tokens") and "--batch-size" not in text
    assert "try fewer max_input_tokens or max_output_tokens" in text


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (torch.cuda.OutOfMemoryError(TORCH_OOM), True),
        (MemoryError(), True),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
            True,
        ),
        (RuntimeError("CUDA error: device-side assert triggered"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_what_counts_as_out_of_memory(exc: BaseException, oom: bool) -> None:
    assert is_out_of_memory(exc) is oom


# ---------------------------------------------------------------- the transformers backend


class OomAbove:
    """Makes every loaded TransformersBackend's ``model.generate`` run out of memory above ``rows`` rows.

    Before raising, the failing call allocates a tensor (its "activations"); ``held`` keeps only weak
    references to them, so a test can see that the memory went with the error.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rows: int, after_calls: int = 0) -> None:
        self.rows, self.after_calls = rows, after_calls
        self.held: list[weakref.ref[torch.Tensor]] = []
        self.calls = 0
        self.released: list[bool] = []  # one entry per release(): was a model loaded then
        self.freed = 0
        real_load, real_release, real_free = (
            hf.TransformersBackend.load,
            hf.TransformersBackend.release,
            hf.free_memory,
        )

        def load(backend: hf.TransformersBackend) -> Any:
            loaded = real_load(backend)
            backend.model.generate = self._wrap(backend.model.generate)
            return loaded

        def release(backend: hf.TransformersBackend) -> None:
            self.released.append(backend.model is not None)
            real_release(backend)

        def free() -> None:
            self.freed += 1
            real_free()

        monkeypatch.setattr(hf.TransformersBackend, "load", load)
        monkeypatch.setattr(hf.TransformersBackend, "release", release)
        monkeypatch.setattr(hf, "free_memory", free)

    def _wrap(self, generate: Callable[..., Any]) -> Callable[..., Any]:
        def oom_or_generate(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if kwargs["input_ids"].shape[0] > self.rows and self.calls > self.after_calls:
                activations = torch.zeros(1024, 1024)
                self.held.append(weakref.ref(activations))
                raise torch.cuda.OutOfMemoryError(TORCH_OOM)
            return generate(*args, **kwargs)

        return oom_or_generate


def test_backend_turns_oom_into_one_error_and_frees_the_failed_call(monkeypatch: pytest.MonkeyPatch) -> None:
    oom = OomAbove(monkeypatch, rows=2)
    backend = hf.TransformersBackend("llem/tiny-gpt2", weights="random", device="cpu")
    backend.load()
    with pytest.raises(OutOfMemoryError) as info:
        backend.generate([[1, 2, 3], [4, 5], [6, 7, 8]], 5)
    text = str(info.value)
    assert text.startswith(
        "out of memory at batch_size 3 (3 prompt tokens + max_output_tokens 5 per row) on cpu"
    )
    assert "try --batch-size 1" in text
    assert info.value.__context__ is None and info.value.__cause__ is None  # no chain back to the failure
    gc.collect()
    assert oom.held and all(ref() is None for ref in oom.held), "the failed call's tensors are still held"
    assert oom.freed == 1
    stats = backend.generate([[1, 2], [3]], 2)  # the model stays loaded: a smaller batch still runs
    assert isinstance(stats, BatchStats) and stats.output_tokens == 4
    backend.release()
    assert backend.model is None and oom.released == [True]


def test_other_generate_errors_are_not_called_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = hf.TransformersBackend("llem/tiny-gpt2", weights="random", device="cpu")
    backend.load()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered")

    backend.model.generate = broken
    with pytest.raises(RuntimeError, match="device-side assert"):
        backend.generate([[1, 2]], 2)


# ---------------------------------------------------------------- the CLI, end to end on the tiny model


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli.app, args, env={"COLUMNS": "200"})


@pytest.mark.parametrize(
    ("stage", "after_calls"), [("warm-up", 0), ("measurement", 1)], ids=["warm-up", "measurement"]
)
@pytest.mark.parametrize("mlflow", [False, True], ids=["files-only", "mlflow"])
def test_run_out_of_memory_exits_1_with_the_hint_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stage: str, after_calls: int, mlflow: bool
) -> None:
    oom = OomAbove(monkeypatch, rows=2, after_calls=after_calls)
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = ["--tracking-uri", uri, "--experiment-name", "oom"] if mlflow else ["--no-mlflow"]
    result = _invoke(["run", *TINY, "--batch-size", "4", "--output-dir", str(out), *flags])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: out of memory at batch_size 4 (4 prompt tokens + max_output_tokens 2 per row) on cpu: "
        "Tried to allocate 2.00 GiB; GPU 0 has 1.50 GiB free of 79.19 GiB; try --batch-size 2, or fewer "
        "max_input_tokens or max_output_tokens (a lower precision, or device_map over several GPUs, also "
        "needs less per GPU)"
    ], result.output
    assert oom.calls == after_calls + 1, f"ran out of memory in {stage}"
    assert out.is_dir() and list(out.iterdir()) == [], "the empty result folder is removed"
    assert oom.released == [True], "the run's model is released"
    if mlflow:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("oom")
        assert exp is None or client.search_runs([exp.experiment_id]) == []


def test_sweep_goes_on_with_smaller_batches_on_the_same_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    oom = OomAbove(monkeypatch, rows=2)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "model: llem/tiny-gpt2\nweights: random\ndevice: cpu\nn: 4\nmax_input_tokens: 4\n"
        "max_output_tokens: 2\nbaseline_s: 0\nsweep:\n  batch_size: [4, 2]\n"
    )
    out = tmp_path / "out"
    result = _invoke(["sweep", str(sweep), "--output-dir", str(out), "--no-mlflow"])
    assert result.exit_code == 1, result.output  # one point failed: run the sweep again for it
    assert '`{"batch_size":4}` | failed: out of memory at batch_size 4' in result.output
    assert '`{"batch_size":2}` | measured' in result.output
    assert oom.released == [], "the sweep's model served both points (the sweep frees it itself)"
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 2 and folders[1].startswith("sweep-"), folders  # the measured point + summary
    assert (out / folders[0] / "result.json").is_file()


# ---------------------------------------------------------------- the runner, on fakes


class OomBackend(FakeBackend):
    """A fake whose ``generate`` fails as the transformers backend does; counts ``release()``."""

    def __init__(self, fail_on_call: int = 1, before_failing: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.fail_on_call = fail_on_call
        self.before_failing = before_failing
        self.releases = 0

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        if len(self.generate_calls) + 1 >= self.fail_on_call:
            if self.before_failing is not None:
                self.before_failing()
            raise out_of_memory_error(TORCH_OOM, "cuda", len(batch), 6, max_output_tokens)
        return super().generate(batch, max_output_tokens)

    def release(self) -> None:
        self.releases += 1


def _cfg(tmp_path: Path) -> ExperimentConfig:
    return ExperimentConfig(
        n=4, batch_size=2, max_input_tokens=6, max_output_tokens=3, output_dir=str(tmp_path / "out"),
        mlflow=False, baseline_s=0.0,
    )  # fmt: skip


def test_runner_releases_a_backend_it_made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend = OomBackend(fail_on_call=2)  # warm-up passes, the first measured batch fails
    monkeypatch.setattr(runner, "_default_backend", lambda cfg: backend)
    with pytest.raises(OutOfMemoryError, match=r"at batch_size 2 .* try --batch-size 1"):
        runner.execute(_cfg(tmp_path))
    assert backend.load_calls == 1 and backend.releases == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_runner_leaves_a_backend_it_was_given_to_its_owner(tmp_path: Path) -> None:
    backend = OomBackend()
    with pytest.raises(OutOfMemoryError):
        runner.execute(_cfg(tmp_path), backend=backend)
    assert backend.releases == 0  # e.g. a sweep's shared model: its next point may fit
    assert list((tmp_path / "out").iterdir()) == []


def test_a_result_folder_holding_files_is_never_removed(tmp_path: Path) -> None:
    def write_into_the_result_folder() -> None:
        (folder,) = (tmp_path / "out").iterdir()
        (folder / "notes.txt").write_text("written before the failure")

    backend = OomBackend(fail_on_call=2, before_failing=write_into_the_result_folder)
    with pytest.raises(OutOfMemoryError):
        runner.execute(_cfg(tmp_path), backend=backend)
    (folder,) = (tmp_path / "out").iterdir()
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
