"""batching: continuous never hangs: a generation loop that dies, stalls or is interrupted ends the call.

CPU, a tiny random llama; each call runs in a helper thread joined with a bound, so a hang fails the test
instead of blocking the suite (the bound is a ceiling for "returned", not a speed assertion).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.backends import continuous  # noqa: E402
from llem_mlflow.backends.continuous import ContinuousBatching  # noqa: E402
from llem_mlflow.errors import BackendError, OutOfMemoryError  # noqa: E402
from tests.unit.test_continuous import PROMPTS, build  # noqa: E402

#: Generous ceiling for a call that must return (a hang is forever; a slow CPU run takes seconds).
RETURNS_WITHIN_S = 60.0


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def llama() -> Iterator[Any]:
    """A tiny llama; afterwards its generation thread is let go and joined, and its manager dropped."""
    model = build("llem/tiny-llama")
    yield model
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    thread = getattr(manager, "_generation_thread", None)
    if thread is not None:
        thread.join(RETURNS_WITHIN_S)
    continuous.release(model)


def bounded(call: Callable[[], Any]) -> BaseException | None:
    """Run ``call`` in a helper thread; its exception (None if it returned); fails the test if it hung."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            caught.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(RETURNS_WITHIN_S)
    assert not worker.is_alive(), f"the call hung (still running after {RETURNS_WITHIN_S} s)"
    return caught[0] if caught else None


def tokens(model: Any, prompts: list[list[int]] = PROMPTS, new: int = 7) -> Callable[[], Any]:
    return lambda: ContinuousBatching(2).new_tokens(model, prompts, new, None, "cpu")


def test_a_forward_that_raises_is_a_backend_error_with_its_message(
    llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom in layer 1")

    monkeypatch.setattr(llama.model.layers[1], "forward", boom)
    error = bounded(tokens(llama))
    assert isinstance(error, BackendError) and "boom in layer 1" in str(error)
    monkeypatch.undo()  # the model works again: the kept manager serves the next call
    assert bounded(tokens(llama)) is None


def test_a_stalled_generation_loop_is_refused_not_waited_on(
    llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward that never returns: no step and no result for STALL_S, so the call gives up."""
    release = threading.Event()
    forward = llama.model.layers[0].forward

    def stuck(*args: Any, **kwargs: Any) -> Any:
        release.wait(RETURNS_WITHIN_S)
        return forward(*args, **kwargs)

    monkeypatch.setattr(llama.model.layers[0], "forward", stuck)
    monkeypatch.setattr(continuous, "STALL_S", 1.0)
    monkeypatch.setattr(continuous, "JOIN_S", 0.2)
    try:
        error = bounded(tokens(llama))
    finally:
        release.set()  # let the generation thread go (the fixture joins it)
    assert isinstance(error, BackendError) and "no forward step" in str(error)


def test_an_interrupt_stops_the_generation_loop_before_it_returns(
    llama: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C/SIGTERM mid-call: the loop is hard-stopped and joined, not left flushing every request.

    A loop left running is what crashed TinyLlama on transformers 5.17: ``stop`` restores ``sdpa`` after its
    join times out, and the still-running loop's next forward meets the paged mask with plain sdpa.
    """
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    forward = llama.model.layers[0].forward
    get_result = ContinuousBatchingManager.get_result

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)  # 300 steps, about 15 s, for every request: a flush outlasts the join
        return forward(*args, **kwargs)

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "current_batch", 0) >= 2:
            raise KeyboardInterrupt  # what SIGTERM becomes in the main thread (interrupts.graceful)
        return get_result(self, *args, **kwargs)

    monkeypatch.setattr(llama.model.layers[0], "forward", slow)
    monkeypatch.setattr(ContinuousBatchingManager, "get_result", interrupted)
    monkeypatch.setattr(continuous, "JOIN_S", 5.0)  # one step fits; the rest of a flush (15 s) does not
    with caplog.at_level(logging.WARNING, logger=continuous.CB_LOGGER):
        error = bounded(tokens(llama, PROMPTS * 4, 30))
        manager = llama._cached_continuous_batching_manager
        running = manager.is_running()
        monkeypatch.undo()  # fast again, so a loop left running ends soon (the fixture joins it)
    assert isinstance(error, KeyboardInterrupt)
    assert not running  # stopped and joined before the interrupt went on
    assert llama.config._attn_implementation == "sdpa"  # the loaded kernel, restored after the loop ended
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


class DeadManager:
    """A manager whose generation thread is gone, having delivered nothing, with ``fatal`` recorded."""

    def __init__(self, fatal: Exception | None, running: bool = False) -> None:
        self.background_thread_status = type("Status", (), {"fatal_error": fatal})()
        self.warmed_up, self.current_batch, self.running, self.stops = True, 0, running, []

    def start(self) -> None:
        pass

    def add_requests(self, inputs: list[list[int]], max_new_tokens: int) -> list[str]:
        return [f"req_{i}" for i in range(len(inputs))]

    def get_result(self, timeout: float | None = None) -> None:
        return None

    def is_running(self) -> bool:
        return self.running

    def stop(self, **kwargs: Any) -> None:
        self.stops.append(kwargs)


class FakeModel:
    generation_config = build("llem/tiny-gpt2").generation_config
    config = None

    def __init__(self, manager: DeadManager) -> None:
        self._cached_continuous_batching_manager = manager

    def generate_batch(self) -> None:
        raise AssertionError("the manager is driven directly")

    def init_continuous_batching(self, **kwargs: Any) -> DeadManager:
        return self._cached_continuous_batching_manager

    def destroy_cached_continuous_batching_manager(self) -> None:
        raise AssertionError("destroy() joins a live thread without a bound")


@pytest.mark.parametrize(
    ("fatal", "raised", "says"),
    [
        (RuntimeError("boom"), BackendError, "the generation loop died: boom"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), OutOfMemoryError, "2.00 GiB"),
        (None, BackendError, "returned 0 of 5 requests"),
    ],
)
def test_a_loop_that_died_before_delivering_is_named(
    fatal: Exception | None, raised: type, says: str
) -> None:
    manager = DeadManager(fatal)
    model = FakeModel(manager)
    with pytest.raises(raised, match=says):
        bounded_or_raise(lambda: ContinuousBatching(2).new_tokens(model, PROMPTS, 7, None, "cuda"))
    assert manager.stops == [{"block": True, "timeout": continuous.JOIN_S, "keep_for_next_session": True}]


def bounded_or_raise(call: Callable[[], Any]) -> None:
    error = bounded(call)
    if error is not None:
        raise error


def test_release_lets_a_stuck_thread_go_instead_of_joining_it() -> None:
    manager = DeadManager(None, running=True)  # stays running through stop: stuck in a step
    model = FakeModel(manager)
    bounded_or_raise(lambda: continuous.release(model))
    assert manager.stops == [{"block": True, "timeout": continuous.JOIN_S, "hard_stop": True}]
    assert not hasattr(model, "_cached_continuous_batching_manager")
    continuous.release(model)  # safe to repeat
