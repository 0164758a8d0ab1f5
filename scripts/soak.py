"""Soak: 100 short experiments against one local tracking server, with random injected faults.

    python scripts/soak.py [--runs 100] [--seed 1] [--keep DIR] [--faults KIND,KIND,...]

Every experiment logs to a real ``mlflow server`` (sqlite store) on 127.0.0.1, or, for ``first-use``, to
a sqlite file that does not exist yet. One fault per experiment; the first experiments take each fault
kind once (shuffled), the rest are drawn at random (seeded); ``--faults`` limits the kinds.

In this process, through the real runner (``runner.execute``), a fake model on a fake GPU
(``tests/fakes.py``):

- ``none``; ``server-restart``: the server stopped during cycle 1, started again after the run;
  ``server-down``: down for the whole run; ``nvml-error``: an NVML read error at a window edge;
  ``gpu-lost``: the GPU lost mid-run; ``interrupt``: Ctrl-C (KeyboardInterrupt) in cycle 2;
- ``slow-server``: through a delaying HTTP proxy (``tests/unit/test_exactly_once.py``'s): every request
  50 ms late, and the first run-create answered 4 s late against a 2 s client timeout with one retry
  (the server holds two runs for the result; one must be retired);
- ``spool-edit``: the server down (the result is spooled), then six hand-edited bad entries made from
  its entry, each under a new id: a number where a string belongs, a list for a mapping, a truncated
  manifest, a ``result_dir`` escaping the spool towards a victim folder, an entry that is a symbolic
  link to a folder outside, an entry whose result.json is a symbolic link.

In a process of its own, the real CLI (``llem-mlflow run``, random-weight ``llem/tiny-gpt2`` on the CPU;
``tests/hold_stage.py`` holds a call so the signal lands exactly there):

- ``signal-write``: SIGINT or SIGTERM while result.json is written;
- ``signal-log``: SIGINT, SIGTERM or two SIGINTs while MLflow logs (``MlflowClient.log_batch`` held);
- ``fsize-limit``: a 4 KiB file size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored): no result file fits, the
  result is logged from memory;
- ``disk-full``: the output folder on a 4 MB tmpfs that fills while the trace is written, the server up
  or down (mounting needs root; without it, a file size limit as in ``fsize-limit``);
- ``first-use``: three runs at once on a new sqlite store (counts as three experiments).

Then ``N/100 on a store, M spooled, 0 lost``; two ``llem-mlflow sync`` at once (the real CLI) upload the
spool, report each bad entry and skip it; and the check: each result held by exactly one run on its store
(tag ``llem.experiment_id``; active, FINISHED or KILLED, not retired), no run left RUNNING, no bad entry
logged, nothing written to the victim folder. The last line: ``100/100 exactly once on their store after
sync``. Exit 1 when anything is lost, held twice, left RUNNING, or a bad entry was logged or not reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mlflow_server import free_port, start_server, stop_server  # noqa: E402

from tests.fakes import FakeBackend, FakeDevice  # noqa: E402

IN_PROCESS: tuple[str, ...] = ("none", "server-restart", "server-down", "nvml-error", "gpu-lost", "interrupt")
IN_PROCESS += ("slow-server", "spool-edit")
CLI = ("signal-write", "signal-log", "fsize-limit", "disk-full", "first-use")
FAULTS = IN_PROCESS + CLI
FIRST_USE_RUNS = 3
HOLD = str(ROOT / "tests" / "hold_stage.py")
WRITE = "llem_mlflow.results.files:write_result_json"
LOG = "mlflow.tracking.client:MlflowClient.log_batch"
FILL = "llem_mlflow.results.files:write_trace_parquet!fill"
LLEM_ID = re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{8}-[0-9a-f]{6}\b")
RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32})", re.IGNORECASE)
SYNC_ROW = re.compile(r"^\S+  (logged|already logged|busy|gone|failed)\b", re.MULTILINE)
BAD_KINDS: tuple[str, ...] = (
    "number-for-string",
    "list-for-mapping",
    "truncated",
    "escaping-path",
    "symlink-entry",
)
BAD_KINDS += ("symlink-file",)


class Server:
    """The tracking server, stoppable and restartable on its port with its data."""

    def __init__(self, data: Path) -> None:
        self.data, self.port, self.proc = data, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is None:
            self.proc, _ = start_server(self.data, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None


@dataclass
class Soak:
    """What the experiments share: the work folder, the server, the proxy, and what was made."""

    work: Path
    server: Server
    rng: random.Random
    can_mount: bool
    proxy: Any = None
    bad: dict[str, str] = field(default_factory=dict)  # bad spool entry name -> kind
    stores: int = 0

    @property
    def spool(self) -> Path:
        from llem_mlflow.tracking import spool

        return spool.spool_dir()


@dataclass
class Kept:
    """One experiment: its fault, the result id kept (None: nothing), the store it was meant for."""

    i: int
    fault: str
    llem_id: str | None
    uri: str
    note: str = ""


# ---------------------------------------------------------------- in this process


def _config(out: Path, uri: str, i: int) -> object:
    from llem_mlflow.config import ExperimentConfig

    return ExperimentConfig.model_validate(
        dict(
            n=4,
            batch_size=2,
            max_input_tokens=4,
            max_output_tokens=3,
            cycles=2,
            baseline_s=0.05,
            idle_settle_max_s=0,
            sampling_interval_s=0.005,
            seed=i,
            output_dir=str(out),
            tracking_uri=uri,
            experiment_name="soak",
            run_name=f"soak-{i:03d}",
        )  # fmt: skip
    )


def _on_call(call: int, action: Callable[[], None]) -> Callable[[], None]:
    count = {"n": 0}

    def hook() -> None:
        count["n"] += 1
        if count["n"] == call:
            action()

    return hook


def _interrupt() -> None:
    raise KeyboardInterrupt


def _in_process(i: int, fault: str, soak: Soak) -> Kept:
    """Run experiment ``i`` here with ``fault``."""
    from llem_mlflow.errors import DeviceError, RunInterrupted
    from llem_mlflow.protocols import CudaDeviceId
    from llem_mlflow.run.execute import GpuSet, execute

    server = soak.server
    cuda0 = CudaDeviceId(cuda_index=0, uuid="GPU-soak-0", pci_bus_id=None)
    energy: list[float | BaseException] = [float(1000 * k) for k in range(1, 400)]
    device = FakeDevice(energy_script=energy, power_w=150.0)
    hook: Callable[[], None] | None = None
    uri = server.uri
    if fault == "server-restart":
        hook = _on_call(3, server.stop)  # during cycle 1: logging at the end finds it down
    elif fault in ("server-down", "spool-edit"):
        server.stop()
    elif fault == "nvml-error":
        energy[4] = DeviceError("NVML read failed: Unknown Error (injected)")  # what NvmlDevice raises
    elif fault == "gpu-lost":
        hook = _on_call(4, device.lose)
    elif fault == "interrupt":
        hook = _on_call(4, _interrupt)  # 1 warm-up + 2 batches per cycle: call 4 opens cycle 2
    elif fault == "slow-server":
        uri = _slow_proxy(soak)

    def gpus(ids: Sequence[CudaDeviceId]) -> GpuSet:
        return GpuSet(devices=[device], driver_version="580.159.04")

    backend = FakeBackend(device="cuda", cuda_devices=[cuda0], on_generate=hook)
    llem_id: str | None = None
    try:
        with _slow_client() if fault == "slow-server" else _nothing():
            outcome = execute(_config(soak.work / "results", uri, i), backend=backend, gpus=gpus)  # type: ignore[arg-type]
        llem_id = outcome.result.experiment_id
    except RunInterrupted as stop:
        kept = stop.outcome
        llem_id = kept.result.experiment_id if kept is not None else None  # type: ignore[attr-defined]
    finally:
        server.start()  # every fault ends with the server back up
    if fault == "spool-edit" and llem_id:
        _hand_edit(soak, llem_id)
    return Kept(i, fault, llem_id, server.uri)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _slow_client() -> Iterator[None]:
    """MLflow's client with a 2 s timeout and one retry, at once (what a slow server meets)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ.update(MLFLOW_HTTP_REQUEST_TIMEOUT="2", MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"
    try:
        yield
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})


def _slow_proxy(soak: Soak) -> str:
    """The proxy's URI, set to delay every request and answer this experiment's first run-create late."""
    from tests.unit.test_exactly_once import CREATE, Proxy

    if soak.proxy is None:
        soak.proxy = Proxy(soak.server.uri)
    late = {"done": False}

    def after(method: str, path: str) -> None:
        time.sleep(0.05)
        if path == CREATE and not late["done"]:
            late["done"] = True
            time.sleep(4)  # the server made the run; the client gave up after 2 s and retries

    soak.proxy.after = after
    return str(soak.proxy.uri)


# ---------------------------------------------------------------- hand-edited spool entries


def _hand_edit(soak: Soak, llem_id: str) -> None:
    """Six bad entries made from the sound entry ``llem_id``, each under a new id (the result.json inside
    names that id, so a bad entry logged by mistake shows up on the store as a result nobody ran)."""
    entry = soak.spool / llem_id
    if not (entry / "spool.json").is_file():
        return
    victim = soak.work / "victim"
    victim.mkdir(exist_ok=True)
    outside = soak.work / "outside"
    outside.mkdir(exist_ok=True)
    for kind in BAD_KINDS:
        name = f"{llem_id}.bad-{kind}"
        where = outside / name if kind == "symlink-entry" else soak.spool / name
        _copy_entry(entry, where, name)
        _spoil(where, kind, victim, outside)
        if kind == "symlink-entry":
            (soak.spool / name).symlink_to(where, target_is_directory=True)
        soak.bad[name] = kind


def _copy_entry(entry: Path, to: Path, name: str) -> None:
    shutil.copytree(entry, to)
    manifest = json.loads((to / "spool.json").read_text())
    manifest["llem_id"] = name
    (to / "spool.json").write_text(json.dumps(manifest))
    result = json.loads((to / "result.json").read_text())
    result["experiment_id"] = name
    (to / "result.json").write_text(json.dumps(result))


def _spoil(folder: Path, kind: str, victim: Path, outside: Path) -> None:
    path = folder / "spool.json"
    manifest = json.loads(path.read_text())
    if kind == "number-for-string":
        manifest["reason"] = 5
    elif kind == "list-for-mapping":
        manifest["target"] = [manifest["target"]["tracking_uri"]]
    elif kind == "escaping-path":
        manifest["result_dir"] = os.path.relpath(victim, folder)  # "../../victim", as a hand edit would
    elif kind == "symlink-file":
        shutil.move(folder / "result.json", outside / f"{folder.name}.result.json")
        (folder / "result.json").symlink_to(outside / f"{folder.name}.result.json")
    text = json.dumps(manifest)
    path.write_text(text[: len(text) // 2] if kind == "truncated" else text)


# ---------------------------------------------------------------- the real CLI, in a process of its own


def _cli_args(soak: Soak, i: int, uri: str, out: Path) -> list[str]:
    return ["run", "--model", "llem/tiny-gpt2", "--weights", "random", "--n", "4", "--batch-size", "2",
            "--max-output-tokens", "4", "--cycles", "3", "--baseline-s", "0", "--seed", str(i),
            "--output-dir", str(out), "--tracking-uri", uri, "--experiment-name", "soak",
            "--run-name", f"soak-{i:03d}"]  # fmt: skip


def _env(soak: Soak, **extra: str) -> dict[str, str]:
    """The CLI's environment: offline, its temporary files in the work folder, this checkout's package."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(soak.work / "tmp"),
        "PYTHONPATH": path,
        **extra,
    }


def _limit_file_size(limit_b: int) -> Callable[[], None]:
    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_b, limit_b))

    return limit


def _spawn(soak: Soak, i: int, args: list[str], hold: str | None = None, **kw: Any) -> subprocess.Popen[str]:
    """The CLI with ``args`` (under ``tests/hold_stage.py`` holding ``hold``): stdout to logs/NNN.out,
    stderr to logs/NNN.err, or a pipe when a HOLD line is to be read."""
    cmd = [sys.executable, HOLD, hold, "--", *args] if hold else [sys.executable, "-m", "llem_mlflow", *args]
    logs = soak.work / "logs"
    err = subprocess.PIPE if hold else (logs / f"{i:03d}.err").open("w")
    out = (logs / f"{i:03d}.out").open("w")
    return subprocess.Popen(cmd, cwd=soak.work, stdout=out, stderr=err, text=True, **kw)


def _finish(soak: Soak, i: int, proc: subprocess.Popen[str], signals: Sequence[signal.Signals] = ()) -> str:
    """Wait for ``proc``, sending ``signals`` at its HOLD line; its stderr (also kept in logs/)."""
    err = soak.work / "logs" / f"{i:03d}.err"
    if proc.stderr is None:
        proc.wait(timeout=600)
        text = err.read_text()
    else:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("HOLD "):
                for sig in signals:
                    proc.send_signal(sig)
        proc.wait(timeout=600)
        text = "".join(lines)
    text += f"exit {proc.returncode}\n"
    err.write_text(text)
    return text


def _kept_id(soak: Soak, i: int, err: str, uri: str) -> str | None:
    """The result id the CLI's output names (or the tag of the MLflow run it names)."""
    text = (soak.work / "logs" / f"{i:03d}.out").read_text() + err
    found = LLEM_ID.findall(text)
    if found:
        return str(found[-1])
    run = RUN_ID.search(text)
    if run is None:
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run.group(1)).data.tags.get("llem.experiment_id")


def _last_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("HOLD ", "exit "))]
    return (lines[-1] if lines else "")[:160]


def _cli_one(i: int, fault: str, soak: Soak) -> Kept:
    """Run experiment ``i`` through the CLI with ``fault`` (not ``first-use``)."""
    uri, out, hold, disk, down = soak.server.uri, soak.work / "results", None, None, False
    signals: tuple[signal.Signals, ...] = ()
    kw: dict[str, Any] = {}
    if fault == "signal-write":
        hold, signals = WRITE, (soak.rng.choice((signal.SIGINT, signal.SIGTERM)),)
    elif fault == "signal-log":
        hold = LOG
        signals = soak.rng.choice(((signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)))
    elif fault == "disk-full" and soak.can_mount and _mount(soak.work / f"disk-{i:03d}"):
        disk, down = soak.work / f"disk-{i:03d}", soak.rng.random() < 0.5  # fill only a tmpfs we mounted
        out, hold, kw = disk / "out", FILL, {"env": _env(soak, LLEM_TEST_FILL_DIR=str(disk))}
    if fault in ("fsize-limit", "disk-full") and not kw:
        kw = {"preexec_fn": _limit_file_size(4096)}
    kw.setdefault("env", _env(soak))
    if down:
        soak.server.stop()
    try:
        err = _finish(soak, i, _spawn(soak, i, _cli_args(soak, i, uri, out), hold, **kw), signals)
    finally:
        soak.server.start()
        if disk is not None:
            subprocess.run(["umount", str(disk)], check=False)
    how = ["+".join(s.name for s in signals)] + ["server down"] * down + [_last_line(err)]
    return Kept(i, fault, _kept_id(soak, i, err, uri), uri, " | ".join(filter(None, how)))


def _first_use(i: int, count: int, soak: Soak) -> list[Kept]:
    """``count`` runs at once on a sqlite store that does not exist yet."""
    soak.stores += 1
    store = soak.work / "stores" / f"new-{soak.stores:02d}"
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    runs = range(i, i + count)
    procs = [_spawn(soak, j, _cli_args(soak, j, uri, soak.work / "results"), env=_env(soak)) for j in runs]
    errs = [_finish(soak, j, p) for j, p in zip(runs, procs, strict=True)]
    return [
        Kept(j, "first-use", _kept_id(soak, j, e, uri), uri, _last_line(e))
        for j, e in zip(runs, errs, strict=True)
    ]


def _mount(disk: Path) -> bool:
    disk.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    return done.returncode == 0


def _can_mount(work: Path) -> bool:
    probe = work / "mount-probe"
    if not _mount(probe):
        return False
    subprocess.run(["umount", str(probe)], check=False)
    return True


# ---------------------------------------------------------------- the stores, the spool and sync


def _census(uri: str) -> dict[str, list[Any]]:
    """Every active run of the store ``uri`` by its ``llem.experiment_id``."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=5000) if ids else []
    out: dict[str, list[Any]] = {}
    for run in runs:
        out.setdefault(run.data.tags.get("llem.experiment_id", ""), []).append(run)
    return out


def _holds(run: Any) -> bool:
    """A run that counts as holding its result: FINISHED or KILLED, not retired."""
    return run.info.status in ("FINISHED", "KILLED") and "llem.retired" not in run.data.tags


@dataclass
class Tally:
    """Each kept result's count of holding runs on its store; runs left RUNNING; results nobody ran."""

    held: dict[str, int]
    running: list[str]
    unexpected: list[str]


def _tally(kept: Sequence[Kept]) -> Tally:
    wanted = {k.llem_id: k.uri for k in kept if k.llem_id}
    held, running, unexpected = dict.fromkeys(wanted, 0), [], []
    for uri in sorted(set(wanted.values())):
        for llem_id, runs in _census(uri).items():
            if llem_id not in wanted or wanted[llem_id] != uri:
                unexpected.append(llem_id or "(untagged)")
                continue
            held[llem_id] += sum(_holds(r) for r in runs)
            running += [f"{llem_id}: {r.info.run_id}" for r in runs if r.info.status == "RUNNING"]
    return Tally(held, running, unexpected)


def _retired(kept: Sequence[Kept]) -> dict[str, int]:
    """How many runs of the stores were retired, by the first words of why."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    why: Counter[str] = Counter()
    for uri in sorted({k.uri for k in kept}):
        client = MlflowClient(uri)
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        for run in client.search_runs(ids, run_view_type=ViewType.DELETED_ONLY, max_results=5000):
            reason = run.data.tags.get("llem.retired")
            if reason is not None:
                why[" ".join(reason.split()[:4])] += 1
    return dict(why)


def _spooled() -> set[str]:
    from llem_mlflow.tracking import spool

    return {e.llem_id for e in spool.pending()}


def _sync_twice(soak: Soak) -> tuple[list[int], str, str]:
    """Two ``llem-mlflow sync`` at once; (exit codes, stdouts, stderrs)."""
    env = _env(soak)
    cmd = [sys.executable, "-m", "llem_mlflow", "sync"]
    procs = [subprocess.Popen(cmd, env=env, cwd=soak.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    (soak.work / "logs" / "sync.out").write_text("\n".join(o + e for o, e in outs))
    return [p.returncode for p in procs], "".join(o for o, _ in outs), "".join(e for _, e in outs)


def _bad_problems(soak: Soak, err: str) -> list[str]:
    """What went wrong with the bad entries: not reported, not left in place, or the victim written to."""
    problems = []
    for name in soak.bad:
        if not any(name in line and "skipped" in line for line in err.splitlines()):
            problems.append(f"bad entry {name} not reported as skipped")
        if not os.path.lexists(soak.spool / name):
            problems.append(f"bad entry {name} was removed from the spool")
    victim = soak.work / "victim"
    if victim.exists() and any(victim.iterdir()):
        problems.append(f"{victim} was written to: {sorted(p.name for p in victim.iterdir())}")
    return problems


# ---------------------------------------------------------------- the soak


def _draw(runs: int, kinds: Sequence[str], rng: random.Random) -> Iterator[str]:
    first = list(kinds)
    rng.shuffle(first)
    for n in range(runs):
        yield first[n] if n < len(first) else rng.choice(kinds)


def _experiments(soak: Soak, runs: int, kinds: Sequence[str]) -> list[Kept]:
    kept: list[Kept] = []
    draws = _draw(runs, kinds, soak.rng)
    while len(kept) < runs:
        fault, i = next(draws), len(kept) + 1
        if fault == "first-use":
            now = _first_use(i, min(FIRST_USE_RUNS, runs - len(kept)), soak)
        elif fault in CLI:
            now = [_cli_one(i, fault, soak)]
        else:
            now = [_in_process(i, fault, soak)]
        for k in now:
            note = f"  [{k.note}]" if k.note else ""
            print(f"[soak] {k.i:03d} {k.fault:<14} {k.llem_id or 'nothing kept'}{note}", flush=True)
        kept += now
    return kept


def _problems(soak: Soak, after: Tally, codes: list[int], err: str) -> list[str]:
    """Every broken promise after sync, one line each."""
    problems = _bad_problems(soak, err) + [f"held {n} times: {i}" for i, n in after.held.items() if n > 1]
    problems += [f"left RUNNING: {r}" for r in after.running] + [f"not run: {u}" for u in after.unexpected]
    problems += ["a Traceback in sync's output"] * ("Traceback" in err)
    problems += [f"still spooled: {sorted(_spooled())}"] * bool(_spooled())
    want = int(bool(soak.bad))  # sync exits 1 when it skipped bad entries
    return problems + [f"sync exit {c} (expected {want})" for c in codes if c != want]


def _report(soak: Soak, kept: list[Kept], started: float) -> int:
    runs = len(kept)
    faults = Counter(k.fault for k in kept)
    print(f"[soak] runs per fault: {dict(sorted(faults.items()))}")
    before, spooled = _tally(kept), _spooled()
    on_store = {i for i, n in before.held.items() if n}
    lost = runs - len(on_store | ({k.llem_id for k in kept} & spooled))
    print(f"{len(on_store)}/{runs} on a store, {len(spooled - on_store)} spooled, {lost} lost", flush=True)
    codes, out, err = _sync_twice(soak)
    rows = Counter(m.group(1) for m in SYNC_ROW.finditer(out))
    print(f"[soak] sync, twice at once: exit {codes}; rows {dict(rows)}; {len(soak.bad)} bad entries made")
    after = _tally(kept)
    print(f"[soak] runs retired (soft-deleted, tag llem.retired): {_retired(kept)}")
    once = sum(n == 1 for n in after.held.values())
    problems = _problems(soak, after, codes, err)
    for problem in problems:
        print(f"[soak] PROBLEM {problem}")
    stores = Counter("server" if k.uri == soak.server.uri else "new sqlite" for k in kept if k.llem_id)
    skipped = len(soak.bad) - sum("not reported" in p for p in problems)
    print(f"[soak] stores: {dict(stores)}; bad spool entries reported and skipped: {skipped}/{len(soak.bad)}")
    print(f"[soak] wall time {time.monotonic() - started:.0f} s")
    print(f"{once}/{runs} exactly once on their store after sync", flush=True)
    return 0 if lost == 0 and once == runs and not problems else 1


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--runs", type=int, default=100)
    args.add_argument("--seed", type=int, default=1)
    args.add_argument("--keep", type=Path, help="keep the server data, results, spool and logs here")
    args.add_argument("--faults", default=",".join(FAULTS), help=f"fault kinds to draw from: {FAULTS}")
    opts = args.parse_args()
    kinds = opts.faults.split(",")
    if set(kinds) - set(FAULTS):
        args.error(f"unknown fault kinds {sorted(set(kinds) - set(FAULTS))}; known: {', '.join(FAULTS)}")
    logging.basicConfig(level=logging.ERROR, format="[soak] %(message)s")
    work = Path(opts.keep or tempfile.mkdtemp(prefix="llem-soak-")).resolve()
    for sub in ("logs", "tmp"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update({"LLEM_MLFLOW_SPOOL_DIR": str(work / "spool"), "MLFLOW_DISABLE_TELEMETRY": "true",
                       "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})  # fmt: skip
    soak = Soak(work, Server(work / "server"), random.Random(opts.seed), _can_mount(work))
    if "disk-full" in kinds and not soak.can_mount:
        print("[soak] cannot mount a tmpfs here: disk-full uses a file size limit instead")
    started = time.monotonic()
    soak.server.start()
    try:
        return _report(soak, _experiments(soak, opts.runs, kinds), started)
    finally:
        if soak.proxy is not None:
            soak.proxy.close()
        soak.server.stop()


if __name__ == "__main__":
    sys.exit(main())
