"""A real ``transformers serve`` (transformers 5.25.0, CPU) serving the tiny model of tests/serving_model.py.

One server for the module: started in its own process group, on a free port, offline; the last test stops
the group. What this pins down, and what was seen running it by hand (2 CPU cores, torch 2.13.0+cpu):

- **Command**: ``transformers serve <folder> --host 127.0.0.1 --port <port> --device cpu``
  (``serving_model.SERVE_TEMPLATE``; ``--host`` defaults to ``localhost``, ``--device`` to ``auto``, i.e.
  CUDA when torch sees one). ``python -m transformers.cli.transformers serve ...`` is the same CLI. The
  folder given is preloaded before uvicorn binds the port: until then connections are refused; a model that
  fails to load ends the process (exit code 1) before the port ever opens.
- **Processes**: three, all in the launcher's group: the CLI (uvicorn, HTTP), the model's process
  (``multiprocessing`` spawn: it generates) and multiprocessing's resource tracker.
- **Time to healthy**: 9 to 19 s from ``Popen`` to the first ``GET /health`` 200 (torch and transformers
  imports, spawning the model's process). With ``--continuous-batching`` and default cache settings: 38 s
  and 60 s, the model's process holding 14.6 GB RSS (its KV cache, sized from memory, on a 23 GB machine);
  with ``--cb-num-blocks 64 --cb-max-batch-tokens 256``: 10 to 13 s and 0.45 GB, like without batching.
- **GET /health**: ``{"status":"ok"}`` (by its code, 503 ``{"status":"unhealthy","reason":"engine_dead"}``
  once the model's process died: not seen, the CLI stops then). **GET /v1/models**:
  ``{"object":"list","data":[{"owned_by":"local","id":"<folder as given>","object":"model","created":0,
  "status":{"value":"loaded"}}]}``. The served id is the folder string exactly as on the command line; a
  request may name it or leave ``model`` out; any other name: 400 ``Server is pinned to '<folder>';
  requested '<name>'.``
- **Streaming /v1/completions** (``stream_options.include_usage``), SSE ``data: <json>\\n\\n`` events
  only (no ``event:`` lines), **no** ``data: [DONE]``: text events ``{"id":..,"choices":[{"index":0,
  "text":" sa"}],"created":..,"model":"<folder>","object":"text_completion"}``, then ``{"choices":[{
  "finish_reason":"length","index":0,"text":""}],..}``, then the usage event ``{"choices":[],..,"usage":{
  "completion_tokens":16,"prompt_tokens":6,"total_tokens":22}}``; then the response ends.
- **Streaming /v1/chat/completions**: first ``{"choices":[{"delta":{"role":"assistant"},"index":0}],..,
  "object":"chat.completion.chunk","system_fingerprint":""}``, then ``{"delta":{"content":":"}}`` events,
  then ``{"choices":[{"delta":{},"index":0,"finish_reason":"length"}],..}``, then ``{"choices":[],..,
  "usage":{..}}``; no ``[DONE]`` either.
- **Chunks are not tokens**: an event carries the text that was ready (a stream that fell behind merges
  several tokens' text: ``" sa sa sa"`` for 3 tokens, 55 to 64 text events for 64 tokens under load), one
  network write may carry several events, and a token whose bytes are not yet valid UTF-8 sends nothing
  (with a full 256-byte alphabet, 16 tokens gave 2 text events: 14 lone-byte tokens never showed in the
  stream, while the non-streaming text showed them as U+FFFD). Hence serving_model's ASCII-only alphabet.
- **Request fields**: ``max_tokens`` is honoured (``max_completion_tokens`` too, chat), ``finish_reason``
  ``"length"``. Without it ``max_new_tokens`` is 1024, past this model's 256 positions: HTTP 500
  (IndexError in the model's process). vLLM's ``ignore_eos`` and ``min_tokens``: HTTP 422 ``Unexpected
  fields in the request: {'ignore_eos'}``. What works is ``generation_config``, a JSON *string* of
  ``generate`` arguments: ``"{\\"min_new_tokens\\": 16}"`` gives exactly ``max_tokens`` tokens even through
  EOS (and ``{"ignore_eos": true}`` inside it: 400, not a ``generate`` argument). The EOS token, when
  generated, counts in ``completion_tokens``. ``temperature: 0`` gives greedy decoding; a temperature above
  0 does NOT sample unless the model's generation config (or ``generation_config``) sets ``do_sample``:
  GPT-2's doesn't. ``seed`` then makes sampling repeatable.
- **Concurrency**: without ``--continuous-batching`` requests run one at a time (3 concurrent requests of
  64 tokens: first text at 0.03, 0.97 and 2.2 s); with it, together (first text of all 3 within 0.11 s,
  all done in 0.22 s), with the same SSE events as above.
- **SIGTERM** to the CLI alone: uvicorn shuts down gracefully, finishing requests in flight (3 s for one
  of 240 tokens), stops its model's process, and exits by the signal (return code -15); idle: 0.2 s.
  SIGTERM to the whole group: the model's process dies at once, a stream in flight ends with
  ``data: {"error": "The model's process crashed (exit code -15)."}`` (HTTP status already 200), and the
  CLI exits by the signal within about 1 s. Either way no process of the group stays alive (the
  children become zombies until their new parent reaps them); even after SIGKILL to the CLI alone, its
  children ended on their own (return code -9).
- **Offline**: ``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1`` alone stops every huggingface.co
  lookup (strace: none with either; without both, the CLI and the model's process each resolve
  huggingface.co). ``serving_model.SERVE_ENV`` also disables telemetry and the CLI's daily update check.
- **Packages**: ``transformers serve`` checks pydantic, fastapi, uvicorn and openai at start
  (``is_serve_available``); loading on CPU then needs ``accelerate`` (``device_map``) and ``kernels``
  (a base requirement of transformers 5.25, also needed at load: without it the model's process fails).
  ``transformers[serving]`` adds to transformers + torch: fastapi, starlette, uvicorn, openai (18.7 MB),
  jiter, opentelemetry-api, sniffio, accelerate, psutil: about 27 MB installed; no leaner set works.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import free_port
from serving_model import SERVE_ENV, SERVE_TEMPLATE, write_tiny_model

#: What ``transformers serve`` imports to start and to load a model on CPU.
SERVE_PACKAGES = ("torch", "transformers", "fastapi", "uvicorn", "openai", "accelerate", "kernels")
HEALTH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
MAX_TOKENS = 16
#: Forces exactly ``max_tokens`` tokens whatever the model predicts (EOS included).
EXACT = json.dumps({"min_new_tokens": MAX_TOKENS})


def _why_skip() -> str | None:
    if sys.platform != "linux":
        return "needs Linux (/proc lists the server's process group)"
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join(missing)
        return f"transformers serve is not importable: missing {names} (pip install 'transformers[serving]')"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))]


@dataclass(frozen=True)
class Server:
    """The running server: its process (the group leader), port, model id and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    model: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def serve_argv(model: Path, port: int) -> list[str]:
    """``SERVE_TEMPLATE`` as an argv, run by this interpreter (``transformers`` -> ``python -m ...``)."""
    argv = shlex.split(SERVE_TEMPLATE.format(model=shlex.quote(str(model)), host="127.0.0.1", port=port))
    assert argv[0] == "transformers"
    return [sys.executable, "-m", "transformers.cli.transformers", *argv[1:]]


def _get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"transformers serve exited ({server.proc.returncode}):\n{server.log_tail()}")
        try:
            if _get(server.port, "/health")[0] == 200:
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass  # not listening yet: it binds the port once the model is loaded
        time.sleep(0.1)
    pytest.fail(f"transformers serve not healthy within {HEALTH_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group; SIGKILL to what is left after ``STOP_TIMEOUT_S``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``transformers serve`` on the tiny model, in a process group of its own, offline, healthy."""
    root = tmp_path_factory.mktemp("transformers-serve")
    model = write_tiny_model(root / "tiny-gpt2")
    port = free_port()
    env = {**os.environ, **SERVE_ENV, "HF_HOME": str(root / "hf-home"), "PYTHONUNBUFFERED": "1"}
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_argv(model, port), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    running = Server(proc, port, str(model), log)
    try:
        _wait_healthy(running)
        yield running
    finally:
        if proc.poll() is None:
            _stop_group(proc)


@dataclass(frozen=True)
class Stream:
    """A streaming response: status, content type, the JSON events in order, and whether [DONE] came."""

    status: int
    content_type: str
    events: list[dict[str, Any]]
    done: bool


def post_stream(port: int, path: str, body: dict[str, Any]) -> Stream:
    """POST ``body`` and read the SSE stream to its end with plain ``http.client``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        events: list[dict[str, Any]] = []
        done = False
        for raw in response:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
            elif line:
                raise AssertionError(f"unexpected SSE line {line!r}")
        return Stream(response.status, response.getheader("Content-Type", ""), events, done)
    finally:
        conn.close()


def post_json(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _check_stream_end(stream: Stream, model: str) -> dict[str, Any]:
    """The common tail: a finish event, then a usage event without choices; returns the usage."""
    assert stream.status == 200
    assert stream.content_type.startswith("text/event-stream")
    assert {event["model"] for event in stream.events} == {model}
    assert len({event["id"] for event in stream.events}) == 1
    *_, finish, last = stream.events
    assert finish["choices"][0]["finish_reason"] == "length"
    assert last["choices"] == []
    usage: dict[str, Any] = last["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert not stream.done, "transformers 5.25 sends no [DONE]: if it does now, update the docstring"
    return usage


def test_health_and_models(server: Server) -> None:
    assert _get(server.port, "/health") == (200, {"status": "ok"})
    status, models = _get(server.port, "/v1/models")
    assert status == 200
    assert [entry["id"] for entry in models["data"]] == [server.model]


def test_streaming_completion_gives_exactly_max_tokens(server: Server) -> None:
    body = {
        "model": server.model,
        "prompt": "Kalo mi ruvo sa",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "generation_config": EXACT,
    }
    stream = post_stream(server.port, "/v1/completions", body)
    usage = _check_stream_end(stream, server.model)
    assert usage["completion_tokens"] == MAX_TOKENS
    texts = [event["choices"][0]["text"] for event in stream.events[:-2]]
    assert all(texts), "every event before the finish event carries text"
    assert 1 <= len(texts) <= usage["completion_tokens"]
    assert {event["object"] for event in stream.events} == {"text_completion"}


def test_streaming_chat_gives_exactly_max_tokens(server: Server) -> None:
    body = {
        "messages": [{"role": "user", "content": "Kalo mi ruvo sa"}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "generation_config": EXACT,
    }  # no "model": a pinned server takes the request as its own
    stream = post_stream(server.port, "/v1/chat/completions", body)
    usage = _check_stream_end(stream, server.model)
    assert usage["completion_tokens"] == MAX_TOKENS
    assert stream.events[0]["choices"][0]["delta"] == {"role": "assistant"}
    texts = [event["choices"][0]["delta"].get("content") for event in stream.events[1:-2]]
    assert all(texts), "every event between the role and the finish events carries content"
    assert 1 <= len(texts) <= usage["completion_tokens"]


def test_eos_stops_early_unless_min_new_tokens(server: Server) -> None:
    """Make the greedy first token the EOS: one token and "stop"; ``min_new_tokens`` overrides it."""
    ask = {"prompt": "Kalo mi ruvo sa", "max_tokens": MAX_TOKENS, "temperature": 0}
    status, first = post_json(server.port, "/v1/completions", {**ask, "max_tokens": 1})
    assert status == 200
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server.model)
    (eos,) = tokenizer(first["choices"][0]["text"])["input_ids"]
    stopped = post_json(
        server.port, "/v1/completions", {**ask, "generation_config": json.dumps({"eos_token_id": eos})}
    )
    assert stopped[1]["usage"]["completion_tokens"] == 1  # the EOS token counts
    assert stopped[1]["choices"][0]["finish_reason"] == "stop"
    forced = {**ask, "generation_config": json.dumps({"eos_token_id": eos, "min_new_tokens": MAX_TOKENS})}
    status, full = post_json(server.port, "/v1/completions", forced)
    assert (status, full["usage"]["completion_tokens"]) == (200, MAX_TOKENS)
    assert full["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("field", [{"ignore_eos": True}, {"min_tokens": MAX_TOKENS}])
def test_vllm_fields_are_rejected(server: Server, field: dict[str, Any]) -> None:
    body = {"prompt": "Kalo", "max_tokens": 4, **field}
    status, answer = post_json(server.port, "/v1/completions", body)
    assert status == 422
    assert "Unexpected fields" in answer["detail"]


def test_another_model_name_is_refused(server: Server) -> None:
    status, answer = post_json(
        server.port, "/v1/completions", {"model": "gpt2", "prompt": "Kalo", "max_tokens": 2}
    )
    assert status == 400
    assert "pinned" in answer["detail"]


def test_sigterm_to_group_leaves_no_process(server: Server) -> None:
    """Last: stops the module's server. The CLI exits by the signal; no process of the group stays alive."""
    assert len(live_group_members(server.proc.pid)) >= 2  # the CLI and the model's process at least
    os.killpg(server.proc.pid, signal.SIGTERM)
    returncode = server.proc.wait(STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while live_group_members(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_group_members(server.proc.pid) == []
    assert returncode == -signal.SIGTERM, server.log_tail()
