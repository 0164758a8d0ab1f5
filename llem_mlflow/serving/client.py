"""The streaming HTTP client of an OpenAI-compatible server: one request in, one ``RequestRecord`` out.

``StreamingClient.send`` posts one streaming request (``/v1/completions`` or ``/v1/chat/completions``),
asks for exactly ``max_output_tokens`` new tokens (``ignore_eos``/``min_tokens``: vLLM and SGLang honour
them; see ``engine_fields``), reads the Server-Sent Events and stamps every chunk that carries text on the
client's clock (``time.time()``). Token counts come from the server's ``usage`` only: the last chunk with
a non-null ``usage`` (vLLM and SGLang send it in a final ``choices: []`` chunk before ``[DONE]``; recent
``transformers serve`` puts it in its finish-reason chunk and sends no ``[DONE]``).

Nothing is raised for a failed request: HTTP errors, errors inside the stream, timeouts, refused or reset
connections and cut streams become the record's one-line ``error``, with the timing seen so far. One
connection per request, so one client is safe to share between threads. A bearer token comes from
``OPENAI_API_KEY``; it is sent, never stored in a message or a repr. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from llem_mlflow.errors import ConfigError
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.served import Api, RequestRecord

#: The routes, appended to the base URL with any trailing ``/v1`` taken off.
ROUTES: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
#: How much of an error body is read, and how much of its message is kept.
_ERROR_BODY_BYTES = 4096
_MESSAGE_CHARS = 200
_DONE = "[DONE]"


@dataclass
class _Progress:
    """What one request's stream has shown so far."""

    sent_s: float
    chunk_s: list[float] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finished: bool = False  # a choice carried a finish_reason


class StreamingClient:
    """Sends one streaming request per ``send`` to the server at ``base_url`` (http or https, with or
    without a trailing ``/v1``), for ``model`` through ``api``; each request is bounded by ``timeout_s``
    as a whole (connect, queueing, every token). ``headers`` are added to every request.

    ``engine_fields``: send ``ignore_eos`` and ``min_tokens`` (so exactly ``max_output_tokens`` come
    back). Servers that validate fields against OpenAI's schema (recent ``transformers serve``) answer
    HTTP 422 to them: pass False there (generation may then stop early at end of sequence). ``extra``:
    more fields for every body (``transformers serve``: ``generation_config`` with ``min_new_tokens``).
    """

    def __init__(
        self,
        base_url: str,
        api: Api,
        model: str,
        timeout_s: float,
        headers: dict[str, str] | None = None,
        *,
        engine_fields: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if api not in ROUTES:
            raise ConfigError(f"unknown api {api!r}: use 'completions' or 'chat'")
        if not timeout_s > 0:
            raise ConfigError(f"request timeout must be > 0 s, got {timeout_s}: set a positive timeout")
        self.scheme, self.host, self.port, self.path = _split_url(base_url)
        self.api: Api = api
        self.model = model
        self.timeout_s = float(timeout_s)
        self.engine_fields = engine_fields
        self.extra = dict(extra or {})
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        self._headers.update(headers or {})
        key = os.environ.get("OPENAI_API_KEY")
        if key and not any(name.lower() == "authorization" for name in self._headers):
            self._headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:  # never the headers: they may hold the token
        return f"StreamingClient({self.scheme}://{self.host}:{self.port}{self.path}, api={self.api!r})"

    def body(self, prompt: str, max_output_tokens: int) -> dict[str, Any]:
        """The JSON body of one request asking exactly ``max_output_tokens`` new tokens, greedy."""
        body: dict[str, Any] = {"model": self.model}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            body["max_completion_tokens"] = max_output_tokens
        else:
            body["prompt"] = prompt
        body["max_tokens"] = max_output_tokens
        body.update(stream=True, stream_options={"include_usage": True}, temperature=0)
        if self.engine_fields:
            body.update(ignore_eos=True, min_tokens=max_output_tokens)
        body.update(self.extra)
        return body

    def send(self, index: int, prompt: str, max_output_tokens: int) -> RequestRecord:
        """Post one request and read its stream to the end; never raises for a failed request."""
        payload = json.dumps(self.body(prompt, max_output_tokens)).encode()
        deadline = time.monotonic() + self.timeout_s
        progress = _Progress(sent_s=time.time())
        conn = self._connection()
        error: str | None
        try:
            conn.connect()  # inside the request's time: a client waits for it too (a full accept queue)
            sock = conn.sock  # kept: http.client may drop it from conn once the response starts
            conn.request("POST", self.path + ROUTES[self.api], body=payload, headers=self._headers)
            _set_timeout(sock, deadline)
            response = conn.getresponse()
            if response.status != 200:
                error = _http_error(response)
            else:
                error = _read_stream(response, progress, sock, deadline, self.api)
        except TimeoutError:
            error = self._timeout()
        except OSError as exc:  # refused, reset, unreachable, TLS
            error = f"connection: {_describe(exc)}"
        except http.client.HTTPException as exc:  # RemoteDisconnected is an OSError too
            error = f"connection: {type(exc).__name__}: {exc}"
        finally:
            conn.close()
        return _record(index, progress, scrub_secrets(error) if error else None)

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def _timeout(self) -> str:
        return f"timeout after {self.timeout_s:g} s"


def _split_url(base_url: str) -> tuple[str, str, int | None, str]:
    """``(scheme, host, port, path prefix)`` of a base URL; the prefix loses a trailing ``/`` and ``/v1``."""
    parts = urllib.parse.urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"server URL {scrub_secrets(base_url)!r} is not http(s)://host[:port][/v1]: "
            "give the server's base URL"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"server URL {scrub_secrets(base_url)!r} has a bad port: {exc}") from None
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return parts.scheme, parts.hostname, port, path


def _set_timeout(sock: Any, deadline: float) -> None:
    """The socket may wait only what is left of the request's time (past it: ``TimeoutError``), so a
    server trickling bytes, each within a timeout, still ends at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    if sock is not None:
        sock.settimeout(remaining)


def _read_stream(
    response: http.client.HTTPResponse, progress: _Progress, sock: Any, deadline: float, api: Api
) -> str | None:
    """Read Server-Sent Events until ``[DONE]``, an error, or the end; None when the stream completed."""
    while True:
        _set_timeout(sock, deadline)
        try:
            raw = response.readline()
        except http.client.IncompleteRead:
            raw = b""  # the body ended mid-chunk: the connection closed
        now = time.time()
        if not raw:
            return None if progress.finished else "stream cut"
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments (":"), event: and id: fields
        data = line[len("data:") :].strip()
        if data == _DONE:
            return None
        error = _take_chunk(data, progress, now, api)
        if error is not None:
            return error


def _take_chunk(data: str, progress: _Progress, now: float, api: Api) -> str | None:
    """Note one ``data:`` payload (text arrival, finish, usage); the error it carries, if any."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        return f"stream error: unreadable chunk {_one_line(data)!r}"
    if not isinstance(chunk, dict):
        return f"stream error: unexpected chunk {_one_line(data)!r}"
    if chunk.get("error") is not None:
        return f"stream error: {_message(chunk)}"
    choices = chunk.get("choices") or []
    if any(_carries_text(choice, api) for choice in choices if isinstance(choice, dict)):
        progress.chunk_s.append(now)
    if any(isinstance(choice, dict) and choice.get("finish_reason") for choice in choices):
        progress.finished = True
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        progress.usage = usage
    return None


def _carries_text(choice: dict[str, Any], api: Api) -> bool:
    if api == "completions":
        return _non_empty(choice.get("text"))
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return any(_non_empty(delta.get(key)) for key in ("content", "reasoning_content", "reasoning"))


def _non_empty(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _record(index: int, progress: _Progress, error: str | None) -> RequestRecord:
    usage = progress.usage or {}
    chunks = tuple(progress.chunk_s)
    return RequestRecord(
        index=index,
        sent_s=progress.sent_s,
        end_s=time.time(),
        first_token_s=chunks[0] if chunks else None,
        chunk_s=chunks,
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
        error=error,
    )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _http_error(response: http.client.HTTPResponse) -> str:
    """``HTTP 500: <message>``: the JSON body's message when there is one, else the body's start."""
    try:
        raw = response.read(_ERROR_BODY_BYTES)
    except (OSError, http.client.HTTPException):
        raw = b""
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        body = None
    message = _message(body) if isinstance(body, dict) else _one_line(text)
    reason = response.reason or ""
    return f"HTTP {response.status}: {message or reason}".rstrip(": ")


def _message(body: dict[str, Any]) -> str:
    """The message of an OpenAI-style error object: ``message``, ``error.message``, ``error``, ``detail``."""
    error = body.get("error")
    for candidate in (
        body.get("message"),
        error.get("message") if isinstance(error, dict) else error,
        body.get("detail"),
    ):
        if candidate:
            return _one_line(candidate if isinstance(candidate, str) else json.dumps(candidate))
    return _one_line(json.dumps(body))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MESSAGE_CHARS]


def _describe(exc: OSError) -> str:
    """``Connection refused`` rather than ``[Errno 111] Connection refused``."""
    return exc.strerror or str(exc) or type(exc).__name__
