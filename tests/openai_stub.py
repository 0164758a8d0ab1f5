"""An in-process fake OpenAI-compatible server for tests: real HTTP on 127.0.0.1, streaming as the engines do.

``OpenAIStub`` answers ``POST /v1/completions`` and ``/v1/chat/completions`` with a Server-Sent Events
stream (HTTP/1.1, chunked, as uvicorn sends it) of ``max_tokens`` tokens (the word ``tok`` each), in
chunks of ``tokens_per_chunk``, then the usage the way each engine sends it with
``stream_options.include_usage``; ``GET /health`` and ``GET /v1/models`` answer too. It counts the
requests (``requests``), keeps their bodies and headers, and the most it had in flight at once
(``max_in_flight``).

The shapes, from the engines' sources:

- ``vllm``: vllm/entrypoints/openai/serving_completion.py and serving_chat.py: every chunk carries
  ``"usage": null``; the last text chunk has ``finish_reason``; then
  ``final_usage_chunk = CompletionStreamResponse(..., choices=[], usage=final_usage_info)``, then
  ``data: [DONE]``. Chat starts with a ``{"role": "assistant", "content": ""}`` delta. Errors inside the
  stream: ``data: {"error": {"object": "error", "message": ..., "type": ..., "code": ...}}``; HTTP errors:
  an ``ErrorResponse`` body (``{"object": "error", "message": ...}``).
- ``sglang``: python/sglang/srt/entrypoints/openai/serving_completions.py and serving_chat.py: the same
  final ``choices=[]`` usage chunk (``model_dump_json(exclude_none=True)``) before ``data: [DONE]``;
  mid-stream chunks carry ``matched_stop``.
- ``transformers``: src/transformers/cli/serving/completion.py and chat_completion.py (``transformers
  serve``): chunks dumped with ``exclude_none=True`` (no ``usage`` key until the end); the stream ends with
  an empty-text chunk holding ``finish_reason`` and ``usage`` together, and no ``data: [DONE]``; chat
  starts with a ``{"role": "assistant"}`` delta; errors: ``data: {"error": "<message>"}``; it answers
  HTTP 422 to fields outside OpenAI's schema (``reject_unknown=True`` does that here).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHAPES = ("vllm", "sglang", "transformers")
#: Fields of OpenAI's completion request types (what ``transformers serve`` accepts, roughly).
OPENAI_FIELDS = frozenset(
    {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options",
     "temperature", "top_p", "n", "stop", "seed", "user", "logprobs", "echo", "suffix", "frequency_penalty",
     "presence_penalty", "logit_bias", "best_of", "tools", "tool_choice", "response_format"}
)  # fmt: skip
WORD = " tok"


class _Server(ThreadingHTTPServer):
    """A real server's accept queue (uvicorn's is 2048), not socketserver's 5: a burst of connections at
    concurrency 16 would otherwise wait for the kernel's SYN retry (~1 s)."""

    request_queue_size = 1024


class OpenAIStub:
    """A fake OpenAI-compatible server on 127.0.0.1 in a background thread; use as a context manager.

    ``shape``: how it streams (vllm, sglang, transformers); ``tokens_per_chunk``: tokens per text chunk;
    ``delay_s``: wait before each text chunk; ``first_delay_s``: wait before the first one;
    ``fail_every``: every k-th generation request answers HTTP 500; ``usage``: send token counts;
    ``status``: answer every generation request with this status; ``cut_stream``: close the connection
    half way through the text, without a finish_reason or ``[DONE]``; ``stream_error``: send an error
    object half way instead; ``gather``: hold each stream until this many requests are in flight at
    once (once reached, never again; 5 s at most), so overlap does not hang on thread timing;
    ``reject_unknown``: HTTP 422 for fields outside OpenAI's schema, as ``transformers serve`` does;
    ``reasoning_chunks``: (chat) the first chunks carry ``delta.reasoning_content`` instead of ``content``;
    ``cut_mid_chunk``: with ``cut_stream``, close inside an HTTP chunk (a server killed mid-write);
    ``usage_every_chunk``: usage so far on every text chunk too (vLLM's ``continuous_usage_stats``).
    """

    def __init__(
        self,
        shape: str = "vllm",
        tokens_per_chunk: int = 1,
        delay_s: float = 0.0,
        fail_every: int = 0,
        usage: bool = True,
        status: int = 200,
        cut_stream: bool = False,
        *,
        first_delay_s: float = 0.0,
        stream_error: bool = False,
        gather: int = 0,
        reject_unknown: bool = False,
        reasoning_chunks: int = 0,
        cut_mid_chunk: bool = False,
        usage_every_chunk: bool = False,
        model: str = "stub-model",
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        self.shape, self.tokens_per_chunk, self.delay_s = shape, tokens_per_chunk, delay_s
        self.fail_every, self.usage, self.status, self.cut_stream = fail_every, usage, status, cut_stream
        self.first_delay_s, self.stream_error, self.gather = first_delay_s, stream_error, gather
        self.reject_unknown, self.reasoning_chunks, self.model = reject_unknown, reasoning_chunks, model
        self.cut_mid_chunk, self.usage_every_chunk = cut_mid_chunk, usage_every_chunk
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.lock = threading.Condition()
        self.closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "use OpenAIStub as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OpenAIStub:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.daemon_threads = False  # server_close() joins the handlers: no thread outlives the stub
        server.stub = self  # type: ignore[attr-defined]
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        with self.lock:
            self.lock.notify_all()
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the stub is closing (True: it is)."""
        return self.closing.wait(seconds) if seconds > 0 else self.closing.is_set()

    def enter(self, body: dict[str, Any], headers: dict[str, str], path: str) -> int:
        """Count a generation request in; its 1-based number."""
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.bodies.append(body)
            self.headers.append(headers)
            self.paths.append(path)
            self.lock.notify_all()
            if self.gather:
                deadline = time.monotonic() + 5.0
                while self.max_in_flight < self.gather and not self.closing.is_set():
                    if not self.lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                        break
            return self.requests

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a keep-alive connection left idle ends its handler thread
    counted = False  # this request is counted in flight

    @property
    def stub(self) -> OpenAIStub:
        return self.server.stub  # type: ignore[attr-defined, no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {})
        elif self.path == "/v1/models":
            owner = {"vllm": "vllm", "sglang": "sglang", "transformers": "transformers"}[self.stub.shape]
            model = {"id": self.stub.model, "object": "model", "created": 0, "owned_by": owner}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        route = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}.get(self.path)
        if route is None:
            self._json(404, {"detail": "Not Found"})
            return
        number = self.stub.enter(body, dict(self.headers.items()), self.path)
        self.counted = True
        try:
            self._answer(route, body, number)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Count the request out, once: before its last bytes are written, so a client that saw its end
        and sends the next one never finds it still counted in."""
        if self.counted:
            self.counted = False
            self.stub.leave()

    def _answer(self, route: str, body: dict[str, Any], number: int) -> None:
        stub = self.stub
        unknown = set(body) - OPENAI_FIELDS
        if stub.reject_unknown and unknown:
            self._leave()
            self._json(422, {"detail": f"Unexpected fields in the request: {sorted(unknown)}"})
        elif stub.status != 200 or (stub.fail_every and number % stub.fail_every == 0):
            status = stub.status if stub.status != 200 else 500
            message = f"stub failure on request {number}"
            self._leave()
            self._json(
                status, {"object": "error", "message": message, "type": "BadRequestError", "code": status}
            )
        else:
            self._stream(route, body)

    def _stream(self, route: str, body: dict[str, Any]) -> None:
        stub = self.stub
        chat = route == "chat"
        n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        usage = {"prompt_tokens": len(str(prompt).split()), "completion_tokens": n,
                 "total_tokens": len(str(prompt).split()) + n}  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        shaper = _Shaper(stub.shape, chat, stub.model)
        if chat:
            self._event(shaper.role())
        if stub.sleep(stub.first_delay_s):
            return self._cut()
        sizes = [min(stub.tokens_per_chunk, n - i) for i in range(0, n, stub.tokens_per_chunk)]
        for k, size in enumerate(sizes):
            if k and stub.sleep(stub.delay_s):
                return self._cut()
            if k == len(sizes) // 2 and (stub.cut_stream or stub.stream_error):
                if stub.stream_error:
                    self._leave()
                    self._event(shaper.error("stub stream failure"))
                    return self._end()
                return self._cut()
            last = k == len(sizes) - 1 and stub.shape != "transformers"
            done = sum(sizes[: k + 1])
            so_far = {**usage, "completion_tokens": done, "total_tokens": usage["prompt_tokens"] + done}
            chunk = shaper.text(WORD * size, "length" if last else None, k < stub.reasoning_chunks)
            if stub.usage_every_chunk:
                chunk["usage"] = so_far
            self._event(chunk)
        self._leave()
        for event in shaper.ending(usage if stub.usage else None):
            self._event(event)
        self._end()

    def _event(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        raw = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """Close the connection mid-body: no terminating chunk (with ``cut_mid_chunk``: half a chunk)."""
        if self.stub.cut_mid_chunk:
            self.wfile.write(b'40\r\ndata: {"choices": [{"te')
            self.wfile.flush()
        self.close_connection = True

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class _Shaper:
    """One engine's chunk objects."""

    def __init__(self, shape: str, chat: bool, model: str) -> None:
        self.shape, self.chat, self.model = shape, chat, model
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {"id": "cmpl-stub", "object": self.object, "created": 0, "model": self.model}
        chunk["choices"] = choices
        if usage is not None or self.shape == "vllm":  # vLLM writes "usage": null on every chunk
            chunk["usage"] = usage
        return chunk

    def _choice(self, text: str | None, finish: str | None, reasoning: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {} if text is None else {"reasoning_content" if reasoning else "content": text}
        else:
            choice["text"] = text or ""
        if finish is not None or self.shape != "transformers":  # transformers drops None fields
            choice["finish_reason"] = finish
            choice["logprobs"] = None
        if self.shape == "sglang":
            choice["matched_stop"] = None
        return choice

    def role(self) -> dict[str, Any]:
        delta = (
            {"role": "assistant"} if self.shape == "transformers" else {"role": "assistant", "content": ""}
        )
        choice = self._choice(None, None)
        choice["delta"] = delta
        return self._chunk([choice])

    def text(self, text: str, finish: str | None, reasoning: bool = False) -> dict[str, Any]:
        return self._chunk([self._choice(text, finish, reasoning)])

    def ending(self, usage: dict[str, Any] | None) -> list[dict[str, Any] | str]:
        if self.shape == "transformers":  # finish and usage in one chunk, no [DONE]
            return [self._chunk([self._choice("" if not self.chat else None, "length")], usage)]
        events: list[dict[str, Any] | str] = []
        if usage is not None:
            events.append(self._chunk([], usage))
        return [*events, "[DONE]"]

    def error(self, message: str) -> dict[str, Any]:
        if self.shape == "transformers":
            return {"error": message}
        return {"error": {"object": "error", "message": message, "type": "InternalServerError", "code": 500}}
