"""serving/client.py against a real HTTP server on 127.0.0.1 (tests/openai_stub.py) shaped as each engine."""

from __future__ import annotations

import socket

import pytest

from llem_mlflow.errors import ConfigError
from llem_mlflow.served import Api
from llem_mlflow.serving.client import StreamingClient
from tests.openai_stub import SHAPES, OpenAIStub

PROMPT = "one two three"  # the stub counts prompt tokens as words: 3


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _client(
    url: str, api: Api = "completions", timeout_s: float = 10.0, engine_fields: bool = True
) -> StreamingClient:
    return StreamingClient(url, api, "stub-model", timeout_s, engine_fields=engine_fields)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("shape", SHAPES)
def test_each_engine_shape_gives_exact_usage_and_a_time_per_chunk(shape: str, api: Api) -> None:
    with OpenAIStub(shape=shape) as stub:
        record = _client(stub.url, api).send(7, PROMPT, 5)
    assert record.error is None and record.ok
    assert (record.index, record.input_tokens, record.output_tokens) == (7, 3, 5)
    assert len(record.chunk_s) == 5  # one per text chunk; role, finish and usage chunks carry no text
    assert record.first_token_s == record.chunk_s[0]
    assert record.sent_s <= record.chunk_s[0] and list(record.chunk_s) == sorted(record.chunk_s)
    assert record.chunk_s[-1] <= record.end_s
    assert (record.cycle, record.warmup) == (0, False)


@pytest.mark.parametrize("shape", SHAPES)
def test_chunks_of_several_tokens_give_fewer_chunks_and_exact_output_tokens(shape: str) -> None:
    with OpenAIStub(shape=shape, tokens_per_chunk=4) as stub:
        record = _client(stub.url).send(0, PROMPT, 10)
    assert record.ok
    assert len(record.chunk_s) == 3  # 4 + 4 + 2
    assert record.output_tokens == 10


def test_reasoning_chunks_carry_text_too() -> None:
    with OpenAIStub(reasoning_chunks=3) as stub:
        record = _client(stub.url, "chat").send(0, PROMPT, 5)
    assert record.ok and len(record.chunk_s) == 5 and record.output_tokens == 5


@pytest.mark.parametrize("shape", SHAPES)
def test_missing_usage_is_none_and_the_request_still_completes(shape: str) -> None:
    with OpenAIStub(shape=shape, usage=False) as stub:
        record = _client(stub.url, "chat").send(0, PROMPT, 4)
    assert record.ok and not record.has_usage
    assert record.input_tokens is None and record.output_tokens is None
    assert len(record.chunk_s) == 4


@pytest.mark.parametrize("status", [500, 400])
def test_an_http_error_becomes_the_error_with_the_servers_message(status: int) -> None:
    with OpenAIStub(status=status) as stub:
        record = _client(stub.url).send(0, PROMPT, 4)
    assert record.error == f"HTTP {status}: stub failure on request 1"
    assert record.chunk_s == () and record.first_token_s is None and not record.ok


def test_fail_every_fails_only_those_requests() -> None:
    with OpenAIStub(fail_every=2) as stub:
        client = _client(stub.url)
        records = [client.send(i, PROMPT, 2) for i in range(4)]
    assert [r.ok for r in records] == [True, False, True, False]


def test_fields_outside_openais_schema_are_refused_by_transformers_and_can_be_left_out() -> None:
    with OpenAIStub(shape="transformers", reject_unknown=True) as stub:
        refused = _client(stub.url).send(0, PROMPT, 3)
        accepted = _client(stub.url, engine_fields=False).send(1, PROMPT, 3)
        sent = stub.bodies[-1]
    assert refused.error is not None and refused.error.startswith("HTTP 422: Unexpected fields")
    assert "ignore_eos" in refused.error
    assert accepted.ok and accepted.output_tokens == 3
    assert "ignore_eos" not in sent and "min_tokens" not in sent


@pytest.mark.parametrize("shape", SHAPES)
def test_a_stream_cut_short_is_an_error_keeping_the_chunks_seen(shape: str) -> None:
    with OpenAIStub(shape=shape, cut_stream=True) as stub:
        record = _client(stub.url).send(0, PROMPT, 6)
    assert record.error == "stream cut"
    assert len(record.chunk_s) == 3  # the stub cuts half way
    assert record.first_token_s == record.chunk_s[0]


def test_a_stream_cut_inside_an_http_chunk_is_a_stream_cut_too() -> None:
    with OpenAIStub(cut_stream=True, cut_mid_chunk=True) as stub:
        record = _client(stub.url).send(0, PROMPT, 6)
    assert record.error == "stream cut" and len(record.chunk_s) == 3


def test_the_last_usage_counts_when_every_chunk_carries_usage() -> None:
    with OpenAIStub(usage_every_chunk=True, tokens_per_chunk=2) as stub:
        record = _client(stub.url).send(0, PROMPT, 8)
    assert (record.input_tokens, record.output_tokens) == (3, 8)


@pytest.mark.parametrize("shape", SHAPES)
def test_an_error_object_inside_the_stream_is_a_stream_error(shape: str) -> None:
    with OpenAIStub(shape=shape, stream_error=True) as stub:
        record = _client(stub.url, "chat").send(0, PROMPT, 6)
    assert record.error == "stream error: stub stream failure"
    assert len(record.chunk_s) == 3


def test_a_server_slower_than_the_timeout_times_out() -> None:
    with OpenAIStub(first_delay_s=30.0) as stub:
        record = _client(stub.url, timeout_s=0.5).send(0, PROMPT, 4)
    assert record.error == "timeout after 0.5 s"
    assert record.chunk_s == ()


def test_the_timeout_bounds_the_whole_request_not_each_read() -> None:
    # each chunk comes well within 0.5 s, the whole stream would take 6 s
    with OpenAIStub(delay_s=0.2) as stub:
        record = _client(stub.url, timeout_s=0.5).send(0, PROMPT, 30)
    assert record.error == "timeout after 0.5 s"
    assert 0 < len(record.chunk_s) < 30  # the partial timing is kept


def test_a_refused_connection_is_a_connection_error() -> None:
    record = _client(f"http://127.0.0.1:{_free_port()}").send(3, PROMPT, 4)
    assert record.error is not None and record.error.startswith("connection: ")
    assert "refused" in record.error.lower()
    assert record.index == 3 and record.sent_s <= record.end_s


def test_an_https_url_speaks_tls() -> None:
    with OpenAIStub() as stub:  # plain HTTP: the TLS handshake fails
        client = _client(stub.url.replace("http://", "https://"))
        record = client.send(0, PROMPT, 2)
    assert client.scheme == "https"
    assert record.error is not None and record.error.startswith("connection: ")


def test_completions_route_and_body() -> None:
    with OpenAIStub() as stub:
        _client(stub.url).send(0, PROMPT, 9)
        path, body = stub.paths[-1], stub.bodies[-1]
    assert path == "/v1/completions"
    assert body == {
        "model": "stub-model",
        "prompt": PROMPT,
        "max_tokens": 9,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "ignore_eos": True,
        "min_tokens": 9,
    }


def test_chat_route_and_body() -> None:
    with OpenAIStub() as stub:
        _client(stub.url, "chat").send(0, PROMPT, 9)
        path, body = stub.paths[-1], stub.bodies[-1]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": PROMPT}]
    assert body["max_tokens"] == body["max_completion_tokens"] == body["min_tokens"] == 9
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "prompt" not in body


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_a_base_url_with_or_without_v1_reaches_the_same_route(suffix: str) -> None:
    with OpenAIStub() as stub:
        record = _client(stub.url + suffix, "chat").send(0, PROMPT, 2)
        path = stub.paths[-1]
    assert record.ok and path == "/v1/chat/completions"


def test_a_path_prefix_is_kept() -> None:
    client = _client("http://example.invalid:8080/proxy/v1/")
    assert (client.host, client.port, client.path) == ("example.invalid", 8080, "/proxy")


def test_the_api_key_is_sent_as_a_bearer_token_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    with OpenAIStub() as stub:
        _client(stub.url).send(0, PROMPT, 2)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-stub-secret")
        client = _client(stub.url)
        client.send(1, PROMPT, 2)
        without, with_key = stub.headers
    assert "Authorization" not in without
    assert with_key["Authorization"] == "Bearer sk-stub-secret"
    assert "sk-stub-secret" not in repr(client)


def test_extra_headers_are_sent() -> None:
    with OpenAIStub() as stub:
        StreamingClient(stub.url, "completions", "m", 5.0, headers={"X-Trace": "abc"}).send(0, PROMPT, 1)
        assert stub.headers[-1]["X-Trace"] == "abc"


@pytest.mark.parametrize("url", ["ftp://host/v1", "localhost:8000", "http://", "http://h:notaport"])
def test_a_url_that_is_not_http_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="URL"):
        _client(url)


def test_a_bad_api_or_timeout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="api"):
        StreamingClient("http://h", "embeddings", "m", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeout"):
        StreamingClient("http://h", "chat", "m", 0)


def test_one_client_serves_many_threads_at_once() -> None:
    import threading

    with OpenAIStub(gather=3, delay_s=0.01) as stub:
        client = _client(stub.url)
        results: dict[int, object] = {}
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, client.send(i, PROMPT, 3)))
            for i in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stub.max_in_flight == 3
    assert all(getattr(results[i], "output_tokens", None) == 3 for i in range(3))
