"""The server scenario's settings rules: which fields go together, and the launch command's placeholders.

``config`` calls ``server_problem`` from its model validator; the message it returns becomes the one-line
``ConfigError`` (a field name first). Pure: nothing is started or contacted here.
"""

from __future__ import annotations

import string
from typing import Any

#: Placeholders a launch command may hold: the model, and where the server is to listen.
PLACEHOLDERS = ("model", "port", "host")
#: Fields only the server scenario reads.
SERVER_FIELDS = ("server_command", "server_url", "server_gpus", "concurrency", "request_rate")
#: In-flight requests of the closed loop when neither ``concurrency`` nor ``request_rate`` is given.
DEFAULT_CONCURRENCY = 8


def command_problem(template: str) -> str | None:
    """Why ``template`` cannot launch a server (None: it can): bad braces, unknown placeholders, no port."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        return f"server_command: {exc} (write a literal brace as {{{{ or }}}})"
    allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        return f"server_command: unknown placeholder {{{unknown[0]}}}; the allowed ones are {allowed}"
    if "port" not in names:
        return (
            "server_command: has no {port}; llem-mlflow picks a free port and must know it, e.g. "
            "'transformers serve {model} --port {port}'"
        )
    return None


def server_problem(values: dict[str, Any]) -> str | None:
    """Why these config values do not make a scenario (None: they do); ``values`` are the config's fields."""
    if values["scenario"] != "server":
        given = [f for f in SERVER_FIELDS if values.get(f) is not None]
        if given:
            return f"{given[0]}: only used with scenario: server (set scenario: server, or remove {given[0]})"
        return None
    return _server_only(values)


def _server_only(values: dict[str, Any]) -> str | None:
    command, url = values.get("server_command"), values.get("server_url")
    if (command is None) == (url is None):
        return (
            "scenario: server needs exactly one of server_command (launch the server, e.g. "
            "'transformers serve {model} --port {port}') or server_url (attach to a running one)"
        )
    if command is not None and (problem := command_problem(command)):
        return problem
    if url is not None and not str(url).startswith(("http://", "https://")):
        return f"server_url: {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000"
    if command is not None and values.get("server_gpus") is not None:
        return "server_gpus: only for an attached server (a launched one runs on CUDA_VISIBLE_DEVICES)"
    if values.get("concurrency") is not None and values.get("request_rate") is not None:
        return "request_rate: give concurrency (closed loop) or request_rate (open loop), not both"
    if values["measurement_methodology"] != "total":
        return (
            "measurement_methodology: the server scenario keeps measurement_methodology: total; its "
            "steady-state window is reported beside the whole load (serving.steady_*)"
        )
    if values["isolated_prefill"]:
        return "isolated_prefill: not available with scenario: server (a server cannot run prefill alone)"
    return None
