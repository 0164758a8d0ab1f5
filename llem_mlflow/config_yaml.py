"""Reading a YAML config file into a mapping, and wording validation errors: each failure one line."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llem_mlflow.errors import ConfigError
from llem_mlflow.secrets import scrub_secrets


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty file: ``{}``).

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not YAML or not a mapping (one line).
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    if data is None:  # empty, or only comments
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of field: value, not {type(data).__name__}"
        )
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``<problem> at line L, column C`` (PyYAML's own text spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


def _loc_part(part: object) -> str:
    text = str(part)
    return text if text.isprintable() else repr(text)  # a YAML key holding a newline stays on one line


#: pydantic's prefix on the message of a ValueError / AssertionError raised in a validator, by error type.
_PYDANTIC_PREFIXES = {"value_error": "Value error, ", "assertion_error": "Assertion failed, "}


def _own_words(error_type: str, msg: str) -> str:
    """A validator's own message without pydantic's "Value error, " style prefix."""
    return msg.removeprefix(_PYDANTIC_PREFIXES.get(error_type, ""))


def format_validation_error(err: ValidationError, fields: Iterable[str]) -> str:
    """``field: message`` per problem, joined by ``; `` (one line); ``fields``: the allowed field names."""
    parts = []
    for item in err.errors():
        loc = ".".join(_loc_part(p) for p in item["loc"]) or "config"
        msg = _own_words(item["type"], item["msg"])
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(fields)
            msg = f"unknown field; allowed fields are: {allowed}"
            if scrub_secrets(f"{loc}: unknown") != f"{loc}: unknown":  # `Authorization: x` reads as a header
                parts.append(f"unknown field {loc!r}; allowed fields are: {allowed}")
                continue
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
