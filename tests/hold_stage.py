"""Test helper: the llem-mlflow CLI with functions held, so a test signals it at an exact stage.

    python tests/hold_stage.py SPEC[,SPEC...] -- CLI ARGS...

Each SPEC is ``module:attr`` or ``module:Class.method``, optionally ``@N`` (hold the N-th call, default
the first). That call writes ``HOLD <SPEC>`` to stderr, then waits for a signal: when
the signal's handler raises (Ctrl-C cutting the call short), the call raises it; when the handler
returns (the signal was held), the call goes on as if nothing happened. No sleep, no timing: the test
reads the HOLD line, sends the signal, and the process is exactly where the line said. A SPEC ending in
``!fill`` does not wait: it fills the file system of ``$LLEM_TEST_FILL_DIR``, then the call goes on.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def hold(spec: str) -> None:
    """Replace the function ``spec`` names with one that holds its N-th call (see the module docstring)."""
    spec, _, action = spec.partition("!")
    target, _, nth = spec.partition("@")
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original: Callable[..., Any] = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def held(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == int(nth or 1):
            _fill(Path(os.environ["LLEM_TEST_FILL_DIR"])) if action == "fill" else _wait_for_signal(spec)
        return original(*args, **kwargs)

    setattr(owner, name, held)


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte (a disk that fills up while a run measures)."""
    chunk = b"\0" * (1 << 16)
    with (folder / "filler").open("ab", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


def _wait_for_signal(spec: str) -> None:
    """Say HOLD, wait for SIGINT/SIGTERM, then hand each one that came to the process's own handlers.

    Stand-in handlers are set before the line is written, so a signal sent right after the line is
    read is always caught. Whichever thread the kernel hands it to, Python runs handlers in the main
    thread; the wait polls their note (``sigwait`` would miss a signal another thread took).
    """
    got: list[int] = []
    before = {sig: signal.signal(sig, lambda signum, frame: got.append(signum)) for sig in _SIGNALS}
    try:
        sys.stderr.write(f"HOLD {spec} pid={os.getpid()}\n")
        sys.stderr.flush()
        while not got:
            time.sleep(0.01)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    for signum in got:
        signal.raise_signal(signum)  # the handler runs here: it raises (the call is cut) or returns (held)


def from_env() -> None:
    """Hold ``$LLEM_TEST_HOLD``'s specs when this process is the llem-mlflow CLI (a ``sitecustomize``
    calls it, so the CLI that ``mlflow run`` starts is held too)."""
    specs = os.environ.get("LLEM_TEST_HOLD")
    if specs and os.path.basename(sys.argv[0] if sys.argv else "") == "llem-mlflow":
        for spec in specs.split(","):
            hold(spec)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    for spec in argv[0].split(","):
        hold(spec)
    from llem_mlflow.cli import app as cli

    sys.argv = ["llem-mlflow", *argv[split + 1 :]]
    cli.main()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the llem_mlflow of this checkout
    main(sys.argv[1:])
