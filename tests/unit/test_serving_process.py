"""The server process: launch, readiness, stop (whole process group), attach, and the launch command.

Real processes: ``tests/fixtures/fake_openai_server.py`` (a stdlib HTTP server) on free ports of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from llem_mlflow.errors import BackendError, ConfigError
from llem_mlflow.serving.process import (
    attach,
    engine_of,
    free_port,
    launch,
    models_owner,
    port_is_busy,
    render_command,
    served_model_name,
)

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "fixtures" / "fake_openai_server.py"
MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "fake"}]}


def fake(port: int, *flags: str) -> list[str]:
    return [sys.executable, str(FAKE), "--port", str(port), *flags]


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def pid_gone(pid: int) -> bool:
    """No such process, or only its zombie (a grandchild's is reaped by init, not by us)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def logged_pid(log: Path, what: str) -> int:
    """The pid the fake server logged (``fake server pid N`` or ``child pid N``)."""
    match = re.search(rf"{what} pid (\d+)", log.read_text())
    assert match, log.read_text()
    return int(match.group(1))


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "server.log"


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Process groups a failing test may leave: killed at teardown, whatever happened."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        if not group_gone(pgid):
            os.killpg(pgid, signal.SIGKILL)


def get_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status)


def test_launch_ready_then_stop_leaves_no_process(port: int, log: Path) -> None:
    url = f"http://127.0.0.1:{port}"
    with launch(fake(port, "--ready-after", "0.8"), url=url, log_path=log, start_timeout_s=10) as server:
        pgid = server.pid
        assert server.alive() and server.returncode is None
        assert get_status(f"{url}/health") == 200  # launch waited through the 503s
        assert port_is_busy("127.0.0.1", port)
    assert not server.alive()
    assert server.returncode == -signal.SIGTERM
    assert group_gone(pgid)
    assert "listening on" in log.read_text()
    server.stop()  # idempotent
    server.stop(grace_s=0)


def test_server_without_health_route_is_ready_by_its_models(port: int, log: Path) -> None:
    url = f"http://127.0.0.1:{port}/v1/"
    with launch(fake(port, "--no-health", "--ready-after", "0.5"), url=url, log_path=log, start_timeout_s=10):
        assert get_status(f"http://127.0.0.1:{port}/v1/models") == 200


def test_crash_at_start_reports_exit_code_and_log_tail(port: int, log: Path) -> None:
    log.parent.mkdir(parents=True)
    log.write_text("an earlier run's line\n")
    with pytest.raises(BackendError) as caught:
        launch(
            fake(port, "--crash-at-start"), url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10
        )
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "loading model tiny | Traceback (most recent call last): | RuntimeError: fake crash" in message
    assert str(log) in message
    assert "\n" not in message
    assert "an earlier run's line" not in message  # the tail is this launch's own output
    assert log.read_text().startswith("an earlier run's line\n")  # appended, nothing lost
    assert group_gone(logged_pid(log, "fake server"))


def test_death_while_loading_is_reported(port: int, log: Path) -> None:
    command = fake(port, "--ready-after", "30", "--die-after", "0.5")
    with pytest.raises(BackendError, match="exited with code 4 before it was ready"):
        launch(command, url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10)


def test_long_log_tail_is_capped_to_one_line(port: int, log: Path) -> None:
    noisy = "import sys\nfor i in range(100): print('x' * 300, i)\nsys.exit(2)"
    command = [sys.executable, "-c", noisy]
    with pytest.raises(BackendError) as caught:
        launch(command, url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10)
    message = str(caught.value)
    assert "code 2" in message and "x 99" in message and "x 80" not in message
    assert len(message) < 1800


def test_never_ready_times_out_and_is_stopped(port: int, log: Path, reap: list[int]) -> None:
    command = fake(port, "--ready-after", "60")
    with pytest.raises(BackendError) as caught:
        launch(command, url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=1.5, grace_s=1)
    reap.append(logged_pid(log, "fake server"))
    message = str(caught.value)
    assert "not ready" in message and "start_timeout_s=1.5 s" in message
    assert "HTTP 503" in message and "listening on" in message
    assert group_gone(reap[0])


def test_busy_port_is_refused_before_anything_starts(port: int, log: Path, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert port_is_busy("127.0.0.1", port)
        with pytest.raises(BackendError) as caught:
            launch(command, url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10)
    assert str(caught.value).startswith(f"port {port} on 127.0.0.1 is in use (by another server?)")
    assert f"server_url: http://127.0.0.1:{port}" in str(caught.value)
    assert not marker.exists() and not log.exists()
    assert not port_is_busy("127.0.0.1", port)


def test_missing_program_is_a_backend_error(port: int, log: Path) -> None:
    with pytest.raises(BackendError, match="cannot start 'no-such-server-xyz'"):
        launch(
            ["no-such-server-xyz", str(port)], url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=5
        )


def test_sigterm_ignored_is_killed_after_grace(port: int, log: Path, reap: list[int]) -> None:
    server = launch(
        fake(port, "--ignore-sigterm"), url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10
    )
    reap.append(server.pid)
    server.stop(grace_s=0.5)
    assert server.returncode == -signal.SIGKILL
    assert group_gone(server.pid)


def test_keyboard_interrupt_in_the_block_still_stops(port: int, log: Path, reap: list[int]) -> None:
    url = f"http://127.0.0.1:{port}"
    with (
        pytest.raises(KeyboardInterrupt),
        launch(fake(port), url=url, log_path=log, start_timeout_s=10) as server,
    ):
        reap.append(server.pid)
        raise KeyboardInterrupt
    assert group_gone(reap[0])


def test_keyboard_interrupt_while_waiting_for_ready_stops(port: int, log: Path, reap: list[int]) -> None:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch(
                fake(port, "--ready-after", "60"),
                url=f"http://127.0.0.1:{port}",
                log_path=log,
                start_timeout_s=30,
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    reap.append(logged_pid(log, "fake server"))
    assert group_gone(reap[0])


def test_grandchild_dies_with_the_group(port: int, log: Path, reap: list[int]) -> None:
    with launch(
        fake(port, "--spawn-child"), url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10
    ) as server:
        reap.append(server.pid)
        child = logged_pid(log, "child")
        assert not pid_gone(child)
    assert pid_gone(child)
    assert group_gone(server.pid)


def test_stop_after_the_server_died_on_its_own(port: int, log: Path) -> None:
    server = launch(
        fake(port, "--die-after", "1"), url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10
    )
    deadline = time.monotonic() + 10
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.returncode == 4
    server.stop()
    server.stop()
    assert group_gone(server.pid)


def test_interpreter_exit_stops_a_server_left_running(port: int, log: Path, reap: list[int]) -> None:
    script = (
        "import sys; from pathlib import Path; from llem_mlflow.serving.process import launch\n"
        f"s = launch({fake(port, '--spawn-child')!r}, url='http://127.0.0.1:{port}',"
        f" log_path=Path({str(log)!r}), start_timeout_s=10)\n"
        "print(s.pid, flush=True)\n"  # exits without stopping it: the atexit hook must
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pgid = int(done.stdout.strip())
    reap.append(pgid)
    assert group_gone(pgid)
    assert pid_gone(logged_pid(log, "child"))


def test_orphans_are_reaped_when_we_are_their_reaper(port: int, log: Path) -> None:
    """As PID 1 (llem-mlflow is the docker image's entrypoint) the group's orphans become our children:
    stop() must reap them, or their zombies keep the group alive forever. A subreaper is the same case."""
    script = (
        "import ctypes, os, re; from pathlib import Path; from llem_mlflow.serving.process import launch\n"
        "assert ctypes.CDLL(None).prctl(36, 1) == 0  # PR_SET_CHILD_SUBREAPER\n"
        f"s = launch({fake(port, '--spawn-child')!r}, url='http://127.0.0.1:{port}',"
        f" log_path=Path({str(log)!r}), start_timeout_s=10, grace_s=1)\n"
        f"child = int(re.findall(r'child pid (\\d+)', Path({str(log)!r}).read_text())[-1])\n"
        "s.stop()\n"
        "try:\n    os.kill(child, 0); print('child left')\nexcept ProcessLookupError: print('child reaped')\n"
        "try:\n    os.killpg(s.pid, 0); print('group left')\nexcept ProcessLookupError: print('group gone')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "reaped", "group", "gone"]


def test_attach_returns_the_models_json(port: int, log: Path) -> None:
    with launch(fake(port), url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10):
        models = attach(f"http://127.0.0.1:{port}/v1")
    assert models == MODELS
    assert served_model_name(models, "org/tiny-model") == "tiny"
    assert engine_of(None, models_owner(models)) == "unknown"


def test_attach_to_health_only_server_returns_empty(port: int, log: Path) -> None:
    with launch(fake(port, "--no-models"), url=f"http://127.0.0.1:{port}", log_path=log, start_timeout_s=10):
        assert attach(f"http://127.0.0.1:{port}/") == {}


def test_attach_to_a_closed_port_fails(port: int) -> None:
    with pytest.raises(BackendError) as caught:
        attach(f"http://127.0.0.1:{port}", timeout_s=0.5)
    message = str(caught.value)
    assert f"no server answers at http://127.0.0.1:{port} (connection refused)" in message
    assert "server_command" in message


def test_attach_to_something_not_http_fails_on_one_line() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer_garbage() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = listener.accept()
                    with conn:
                        conn.recv(4096)
                        conn.sendall(b"garbage\r\nmore garbage\r\n\r\n")

        threading.Thread(target=answer_garbage, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(BackendError) as caught:
            attach(url, timeout_s=0.5)
    assert str(caught.value).startswith(f"no server answers at {url} (garbage")
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)


def test_attach_rejects_a_url_that_is_not_http() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        attach("127.0.0.1:8000")


def test_free_port_is_free() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert not port_is_busy("127.0.0.1", port)


def test_render_command_fills_placeholders() -> None:
    argv = render_command("vllm serve {model} --host {host} --port {port}", model="org/m", port=8123)
    assert argv == ["vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "8123"]
    spaced = render_command(
        "transformers serve '{model}' --port={port} --json '{{\"a\": 1}}'", model="/m/a b", port=1
    )
    assert spaced == ["transformers", "serve", "/m/a b", "--port=1", "--json", '{"a": 1}']


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "vllm serve {model} --port {port} --gpu {gpu}",
            r"unknown placeholder \{gpu\}.*\{model\}, \{port\}, \{host\}",
        ),
        ("vllm serve {} --port {port}", r"unknown placeholder \{\}"),
        ("vllm serve {model} --port {port:d}", r"unknown placeholder \{port:d\}"),
        ("vllm serve {model}", r"no \{port\} placeholder.*\{model\}, \{port\}, \{host\}"),
        ("", r"no \{port\} placeholder"),
        ("vllm serve '{model} --port {port}", r"malformed \(No closing quotation\)"),
        ("vllm serve {model --port {port}", r"malformed"),
    ],
)
def test_render_command_rejects_bad_templates(template: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        render_command(template, model="m", port=1)


@pytest.mark.parametrize(
    ("command", "owned_by", "engine"),
    [
        (["transformers", "serve", "org/vllm-tiny", "--port", "1"], None, "transformers"),
        (["/opt/bin/vllm", "serve", "m"], "someone", "vllm"),
        (["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"], None, "vllm"),
        (["python3", "-m", "sglang.launch_server", "--model-path", "m"], None, "sglang"),
        (["text-generation-launcher", "--model-id", "m"], None, "tgi"),
        (["python", "serve.py"], "vllm", "vllm"),
        (None, "sglang", "sglang"),
        (None, "fake", "unknown"),
        (None, None, "unknown"),
        ([], None, "unknown"),
    ],
)
def test_engine_of(command: list[str] | None, owned_by: str | None, engine: str) -> None:
    assert engine_of(command, owned_by) == engine


@pytest.mark.parametrize(
    ("models", "requested", "name"),
    [
        ({"data": [{"id": "a"}, {"id": "b"}]}, "b", "b"),
        ({"data": [{"id": "served-name"}]}, "org/model", "served-name"),
        ({"data": [{"id": "a"}, {"id": "b"}]}, "c", "c"),
        ({}, "c", "c"),
        ({"data": "junk"}, "c", "c"),
        ({"data": 5}, "c", "c"),
    ],
)
def test_served_model_name(models: dict[str, object], requested: str, name: str) -> None:
    assert served_model_name(models, requested) == name
