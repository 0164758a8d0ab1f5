"""serving/load.py: closed and open loop, seeded arrivals, stop and Ctrl-C; real sockets and fakes."""

from __future__ import annotations

import itertools
import random
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from llem_mlflow.errors import ConfigError
from llem_mlflow.served import LoadSettings, RequestRecord
from llem_mlflow.serving import load
from llem_mlflow.serving.client import StreamingClient
from llem_mlflow.serving.load import LoadInterrupted, arrival_offsets, run_load, validate_load
from tests.openai_stub import OpenAIStub

CLOSED = LoadSettings(mode="closed", n=12, max_output_tokens=3, concurrency=4, timeout_s=10.0)
OPEN = LoadSettings(mode="open", n=20, max_output_tokens=3, request_rate=400.0, timeout_s=10.0)


def _prompts(n: int) -> list[str]:
    return [f"prompt number {i}" for i in range(n)]


def _load_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(load.THREAD_PREFIX)]


def _instant(index: int, prompt: str) -> RequestRecord:
    now = time.time()
    return RequestRecord(index=index, sent_s=now, end_s=now, output_tokens=len(prompt))


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def threads_left() -> Iterator[None]:
    """No thread outlives the test (the stub's included: it joins its own on exit)."""
    before = threading.active_count()
    yield
    assert _load_threads() == []
    assert threading.active_count() == before


def test_closed_loop_keeps_concurrency_in_flight_and_returns_every_record_in_order(
    threads_left: None,
) -> None:
    prompts = _prompts(12)
    seen: list[tuple[int, str]] = []
    with OpenAIStub(gather=4, delay_s=0.01) as stub:
        client = StreamingClient(stub.url, "completions", "stub-model", 10.0)

        def send(i: int, p: str) -> RequestRecord:
            seen.append((i, p))
            return client.send(i, p, 3)

        outcome = run_load(send, prompts, CLOSED, cycle=2, warmup=True)
        assert stub.max_in_flight == 4 and stub.requests == 12
        assert sorted(b["prompt"] for b in stub.bodies) == sorted(prompts)
    assert [r.index for r in outcome.records] == list(range(12))
    assert all(r.ok and r.output_tokens == 3 for r in outcome.records)
    assert all(r.cycle == 2 and r.warmup for r in outcome.records)
    assert all(p == prompts[i] for i, p in seen) and len(seen) == 12
    assert outcome.target_concurrency == 4 and outcome.delayed == 0


def test_closed_loop_at_concurrency_one_sends_one_at_a_time(threads_left: None) -> None:
    with OpenAIStub(delay_s=0.005) as stub:
        client = StreamingClient(stub.url, "chat", "stub-model", 10.0)
        outcome = run_load(
            lambda i, p: client.send(i, p, 2), _prompts(5), replace(CLOSED, n=5, concurrency=1)
        )
        assert stub.max_in_flight == 1
    assert [r.index for r in outcome.records] == [0, 1, 2, 3, 4]


def test_more_workers_than_requests_is_fine(threads_left: None) -> None:
    outcome = run_load(_instant, _prompts(3), replace(CLOSED, n=3, concurrency=50))
    assert [r.index for r in outcome.records] == [0, 1, 2]


def test_extra_prompts_are_not_sent_and_too_few_are_a_config_error() -> None:
    outcome = run_load(_instant, _prompts(9), replace(CLOSED, n=4))
    assert [r.index for r in outcome.records] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="prompts"):
        run_load(_instant, _prompts(3), replace(CLOSED, n=4))


def test_a_send_that_raises_becomes_that_requests_error(threads_left: None) -> None:
    def send(i: int, p: str) -> RequestRecord:
        if i == 2:
            raise RuntimeError("boom")
        return _instant(i, p)

    outcome = run_load(send, _prompts(6), replace(CLOSED, n=6, concurrency=2))
    assert [r.index for r in outcome.records] == list(range(6))
    assert outcome.records[2].error == "client: RuntimeError: boom"
    assert sum(r.ok for r in outcome.records) == 5


def test_arrival_offsets_are_seeded_by_seed_and_cycle() -> None:
    first = arrival_offsets(50, 5.0, seed=42, cycle=0)
    assert first == arrival_offsets(50, 5.0, seed=42, cycle=0)
    assert first != arrival_offsets(50, 5.0, seed=42, cycle=1)
    assert first != arrival_offsets(50, 5.0, seed=7, cycle=0)
    assert first[0] == 0.0 and first == sorted(first) and len(first) == 50
    rng = random.Random(42 * 1000003 + 0)  # the documented seed: seed * 1000003 + cycle
    assert first[1] == rng.expovariate(5.0) and first[2] == first[1] + rng.expovariate(5.0)


def test_arrival_gaps_average_one_over_the_rate() -> None:
    rate = 8.0
    for cycle in range(3):
        offsets = arrival_offsets(2001, rate, seed=42, cycle=cycle)
        gaps = [b - a for a, b in itertools.pairwise(offsets)]
        # 2000 exponential draws: the mean's standard error is 2.2 %; 10 % is 4.5 of them
        assert abs(statistics.fmean(gaps) * rate - 1.0) < 0.10
        assert min(gaps) >= 0.0


def test_open_loop_sends_each_request_at_its_arrival_time(threads_left: None) -> None:
    calls: dict[int, float] = {}
    start = time.monotonic()

    def send(i: int, p: str) -> RequestRecord:
        calls[i] = time.monotonic() - start
        return _instant(i, p)

    outcome = run_load(send, _prompts(20), OPEN, cycle=3)
    offsets = arrival_offsets(20, OPEN.request_rate or 0.0, OPEN.seed, 3)
    assert [r.index for r in outcome.records] == list(range(20))
    assert all(r.cycle == 3 for r in outcome.records)
    assert all(calls[i] >= offsets[i] for i in range(20))  # never early (the dispatcher sleeps until then)
    assert outcome.delayed == 0 and outcome.target_concurrency is None


def test_open_loop_requests_overlap_whatever_is_in_flight(threads_left: None) -> None:
    settings = replace(OPEN, n=6, request_rate=1000.0)
    with OpenAIStub(gather=6) as stub:  # every stream waits until all six are in
        client = StreamingClient(stub.url, "completions", "stub-model", 10.0)
        outcome = run_load(lambda i, p: client.send(i, p, 2), _prompts(6), settings)
        assert stub.max_in_flight == 6
    assert all(r.ok for r in outcome.records) and len(outcome.records) == 6


def test_open_loop_counts_requests_that_waited_for_a_thread(
    monkeypatch: pytest.MonkeyPatch, threads_left: None
) -> None:
    monkeypatch.setattr(load, "MAX_OPEN_THREADS", 2)
    release = threading.Event()
    timer = threading.Timer(0.5, release.set)  # long after all five arrivals (about 5 ms)

    def send(i: int, p: str) -> RequestRecord:
        release.wait(10.0)
        return _instant(i, p)

    timer.start()
    outcome = run_load(send, _prompts(5), replace(OPEN, n=5, request_rate=1000.0))
    timer.join()
    assert len(outcome.records) == 5
    assert 1 <= outcome.delayed <= 3


def test_a_set_stop_event_sends_nothing_more_and_returns_what_ended(threads_left: None) -> None:
    stop = threading.Event()

    def send(i: int, p: str) -> RequestRecord:
        if i == 3:
            stop.set()
        return _instant(i, p)

    outcome = run_load(send, _prompts(10), replace(CLOSED, n=10, concurrency=1), stop=stop)
    assert [r.index for r in outcome.records] == [0, 1, 2, 3]


def test_a_stop_event_also_stops_the_open_loop(threads_left: None) -> None:
    stop = threading.Event()

    def send(i: int, p: str) -> RequestRecord:
        stop.set()
        return _instant(i, p)

    outcome = run_load(send, _prompts(10), replace(OPEN, n=10, request_rate=2.0), stop=stop)
    assert [r.index for r in outcome.records] == [0]  # the next arrival (~0.5 s later) never came


def _interrupting(send_one: object, at: int, stop: threading.Event) -> object:
    """A send that, once request ``at`` ended, delivers SIGINT to the main thread as Ctrl-C would."""

    def send(i: int, p: str) -> RequestRecord:
        record: RequestRecord = send_one(i, p)  # type: ignore[operator]
        if i == at:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            stop.wait(10.0)  # the main thread saw it: nothing new is sent from here
        return record

    return send


def test_ctrl_c_in_the_closed_loop_raises_load_interrupted_with_what_completed(threads_left: None) -> None:
    stop = threading.Event()
    with OpenAIStub(delay_s=0.005) as stub:
        client = StreamingClient(stub.url, "completions", "stub-model", 10.0)
        send = _interrupting(lambda i, p: client.send(i, p, 3), at=2, stop=stop)
        with pytest.raises(LoadInterrupted) as caught:
            run_load(send, _prompts(12), replace(CLOSED, concurrency=1), stop=stop, cycle=1)  # type: ignore[arg-type]
        assert _load_threads() == []
    assert isinstance(caught.value, KeyboardInterrupt)
    records = caught.value.outcome.records
    assert [r.index for r in records] == [0, 1, 2]
    assert all(r.ok and r.cycle == 1 for r in records)


def test_ctrl_c_lets_requests_in_flight_finish(threads_left: None) -> None:
    stop = threading.Event()
    with OpenAIStub(delay_s=0.01) as stub:
        client = StreamingClient(stub.url, "chat", "stub-model", 10.0)
        send = _interrupting(lambda i, p: client.send(i, p, 4), at=0, stop=stop)
        with pytest.raises(LoadInterrupted) as caught:
            run_load(send, _prompts(40), replace(CLOSED, n=40, concurrency=3), stop=stop)  # type: ignore[arg-type]
        assert _load_threads() == []
        sent = stub.requests
    records = caught.value.outcome.records
    assert 0 in {r.index for r in records} and len(records) < 40
    assert len(records) == sent and all(r.ok for r in records)  # every request sent ended and is kept


def test_ctrl_c_in_the_open_loop_raises_load_interrupted(threads_left: None) -> None:
    stop = threading.Event()
    send = _interrupting(_instant, at=1, stop=stop)
    with pytest.raises(LoadInterrupted) as caught:
        run_load(send, _prompts(30), replace(OPEN, n=30, request_rate=20.0), stop=stop)  # type: ignore[arg-type]
    assert _load_threads() == []
    indices = [r.index for r in caught.value.outcome.records]
    assert 1 in indices and len(indices) < 30 and indices == sorted(indices)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (LoadSettings(mode="closed", n=4, max_output_tokens=8), "set concurrency"),
        (LoadSettings(mode="closed", n=4, max_output_tokens=8, concurrency=2, request_rate=1.0), "set one"),
        (LoadSettings(mode="closed", n=4, max_output_tokens=8, concurrency=0), "concurrency must be >= 1"),
        (LoadSettings(mode="open", n=4, max_output_tokens=8, request_rate=0.0), "request_rate must be"),
        (LoadSettings(mode="open", n=4, max_output_tokens=8, request_rate=-2.0), "request_rate must be"),
        (LoadSettings(mode="open", n=4, max_output_tokens=8, request_rate=float("inf")), "request_rate must"),
        (LoadSettings(mode="closed", n=0, max_output_tokens=8, concurrency=1), "set n"),
        (LoadSettings(mode="open", n=4, max_output_tokens=8, concurrency=2), "needs request_rate"),
        (LoadSettings(mode="closed", n=4, max_output_tokens=8, request_rate=2.0), "needs concurrency"),
        (LoadSettings(mode="closed", n=4, max_output_tokens=0, concurrency=1), "max_output_tokens"),
        (LoadSettings(mode="closed", n=4, max_output_tokens=8, concurrency=1, timeout_s=0), "timeout"),
    ],
)
def test_validate_load_says_what_to_set(settings: LoadSettings, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        validate_load(settings)
    with pytest.raises(ConfigError):
        run_load(_instant, _prompts(4), settings)


def test_validate_load_accepts_both_loops() -> None:
    validate_load(CLOSED)
    validate_load(OPEN)
