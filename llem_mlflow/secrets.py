"""Secret scrubbing: credentials never reach a param, tag, artifact, file, log line, error or the terminal.

``scrub_secrets`` is the one function every text that may hold a URI goes through (result.json, MLflow
params, the spool manifest, ``mlflow_run.json``, error messages, log lines, tracebacks, what MLflow
prints). The rule, whatever the scheme and however the URI is written (percent-encoded or not):

- database URIs (``postgresql``, ``mysql``, ``mssql``, ... with or without ``+driver``) keep their user
  name and lose the password: ``postgresql://u:p%2Fw@h:5432/db`` becomes ``postgresql://u@h:5432/db``;
- every other scheme (http, https, databricks, s3, ...) loses the whole user part, since a user-only
  ``https://token@host`` is a token: ``https://u:p@host`` becomes ``https://host``;
- query and connection parameters whose name says secret (token, password, key, secret, signature,
  credential, auth, ...) keep their name and lose their value: ``?password=x`` becomes ``?password=***``;
  so do libpq-style ``password=x`` words and ``Authorization:`` header values.

``same_store`` and ``usable_uri`` let the spool keep a URI without secrets and get them back at sync.
``scrubbed_stdout`` scrubs what a library prints (MLflow's "View run at <URI>" line) while it is held.
``quiet_url_printing`` keeps that line off the terminal in processes we do not run (``mlflow run``'s parent).
Standard library only, no imports from the package, so config, errors and tracking can all use it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

MASK = "***"
#: Schemes (before any ``+driver``) whose URIs name a database: their user name is kept, it is no secret.
DATABASE_SCHEMES = frozenset(
    {"postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "cockroachdb", "sqlite"}
)
_SCHEME = r"(?P<scheme>\b(?P<name>[a-zA-Z][a-zA-Z0-9+.-]*)://)"
# A database URI as SQLAlchemy reads it: the user has no ':' or '/', the password runs to the '@'
# (it may hold '/', '?' or '#'); further '@' before the host are the password's too.
_DB_USERINFO = re.compile(_SCHEME + r"(?P<user>[^:/@\s]*)(?::[^@\s]*)?@(?:[^@\s/?#]*@)*")
# Any other URI as urllib reads it: the user part runs to the last '@' before the path.
_USERINFO = re.compile(_SCHEME + r"[^/?#\s]*@")
_SECRET_WORDS = r"token|password|passw|passwd|pwd|key|secret|signature|sig|credential|auth"
_SECRET_PARAM = re.compile(
    rf"(?P<name>[?&;][^=&;#\s]*(?:{_SECRET_WORDS})[^=&;#\s]*=)[^&;#\s]+", re.IGNORECASE
)
_DSN_PASSWORD = re.compile(
    r"(?P<name>(?<![\w.-])[\w.-]*(?:password|passwd|pwd|secret|token)\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\",;&]+)",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(
    r"(?P<name>authorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|token)\s+)?)[^\s\"',}]+", re.IGNORECASE
)
# The user part of any URI (database ones too): entries spooled before database user names were kept.
_ANY_USERINFO = re.compile(_SCHEME + r"[^/?#\s@]*@")
_MASKED_PARAM = re.compile(rf"(?<=[?&;])[^=&;#\s]+={re.escape(MASK)}(?:[&;]|(?=#|$))")


def scrub_secrets(text: str) -> str:
    """``text`` with the credentials of every URI in it, and secret-looking values, removed.

    ``https://u:p@host/x?token=abc&run=1`` becomes ``https://host/x?token=***&run=1``;
    ``mysql+pymysql://u:p@h/db`` becomes ``mysql+pymysql://u@h/db`` (see the module docstring).
    """
    text = _DB_USERINFO.sub(_database_user, text)
    text = _USERINFO.sub(_no_user, text)
    text = _SECRET_PARAM.sub(rf"\g<name>{MASK}", text)
    text = _DSN_PASSWORD.sub(rf"\g<name>{MASK}", text)
    return _AUTH_HEADER.sub(rf"\g<name>{MASK}", text)


def _is_database(scheme: str) -> bool:
    return scheme.lower().split("+")[0] in DATABASE_SCHEMES


def _database_user(match: re.Match[str]) -> str:
    if not _is_database(match["name"]):
        return match[0]  # left for _USERINFO
    return match["scheme"] + (f"{match['user']}@" if match["user"] else "")


def _no_user(match: re.Match[str]) -> str:
    return match[0] if _is_database(match["name"]) else match["scheme"]


def same_store(uri: str, stored: str) -> bool:
    """Does ``uri`` (which may hold credentials) name the store ``stored`` (a scrubbed URI) names?

    True when ``uri`` scrubbed is ``stored`` (trailing '/' aside), or is ``stored`` once its user name is
    dropped too (entries spooled before database user names were kept).
    """
    clean, stored = scrub_secrets(uri).rstrip("/"), stored.rstrip("/")
    return clean == stored or _ANY_USERINFO.sub(r"\g<scheme>", clean) == stored


def usable_uri(stored: str) -> str:
    """A scrubbed URI made usable again: parameters masked to ``***`` are dropped, so the driver reads the
    secret from where it keeps it (``PGPASSWORD``, ``~/.pgpass``, ``MLFLOW_TRACKING_PASSWORD``)."""
    uri = _MASKED_PARAM.sub("", stored)
    return uri[:-1] if uri.endswith(("?", "&", ";")) else uri


class _Scrubbing:
    """A text stream writing ``scrub_secrets(text)`` to ``target``; anything else is ``target``'s."""

    def __init__(self, target: TextIO) -> None:
        self.target = target

    def write(self, text: str) -> int:
        self.target.write(scrub_secrets(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_stdout_lock = threading.Lock()
_stdout_holders = 0


@contextmanager
def scrubbed_stdout() -> Iterator[None]:
    """While held, ``sys.stdout`` scrubs what it is given (MLflow prints "View run at <tracking URI>").

    Re-entrant and thread-safe: the first holder wraps the stream, the last one puts it back (unless
    something else replaced ``sys.stdout`` meanwhile; then that is left alone).
    """
    global _stdout_holders
    with _stdout_lock:
        if _stdout_holders == 0 and not isinstance(sys.stdout, _Scrubbing):
            sys.stdout = cast(TextIO, _Scrubbing(sys.stdout))
        _stdout_holders += 1
    try:
        yield
    finally:
        with _stdout_lock:
            _stdout_holders -= 1
            current: Any = sys.stdout
            if _stdout_holders == 0 and isinstance(current, _Scrubbing):
                sys.stdout = current.target


#: MLflow's switch for its "View run at <URI>" line (``mlflow.environment_variables``).
SUPPRESS_URL_VAR = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def quiet_url_printing(environ: dict[str, str] | None = None) -> bool:
    """Turn MLflow's "View run at <URI>" line off when ``MLFLOW_TRACKING_URI`` holds credentials.

    For processes whose stdout we cannot scrub: ``mlflow run``'s parent prints that line with the URI
    as given, password included, when the run ends. Called when MLflow loads our run context provider
    (every process that imports ``mlflow``). A user's own setting of the variable is left as it is.
    True when the line was turned off here.
    """
    env: Any = os.environ if environ is None else environ
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri or SUPPRESS_URL_VAR in env or scrub_secrets(uri) == uri:
        return False
    env[SUPPRESS_URL_VAR] = "true"
    return True
