"""A low-overhead sampling profile of one Python module run: where the main thread's time goes.

``python scripts/sample_profile.py OUT.txt [--interval-s 0.02] -m MODULE [ARGS...]`` runs ``MODULE`` as
``python -m MODULE ARGS...`` would (``runpy``, ``sys.argv`` set), while a daemon thread reads the main
thread's stack every ``--interval-s`` (``sys._current_frames``). Each sample counts once for the function
on top of the stack (self) and once for every distinct function below it (cumulative); seconds are the
samples' share of the run's wall time. The report (OUT.txt): the run's wall time and samples, the functions
with the most cumulative and self time, and self time by top-level package (the file's folder under
site-packages, else the file). Imports show as the ``<module>`` code of each imported file.

Why not cProfile: it hooks every call, so it inflates Python-heavy stages most (one run each on the quiet dev
CPU, default gpt2 run: start-up 2.3 s and checks 1.4 s under cProfile against 1.5 s and 0.9 s plain), and it
misses time spent waiting in C (a CUDA context, file reads under gVisor) unless a Python call wraps it. The
sampler reads wall time; its cost is one stack walk per sample: sampling every 5 or 20 ms left every stage
outside the windows within run-to-run noise there (start-up 1.5 / 1.9 s, checks 0.9 / 1.3 s, load 5.7 / 7.8 s,
against 1.5, 0.9 and 5.6-6.5 s in two plain runs). Read the stages outside the windows from such a run, not
its energy figures.
Only the main thread is sampled; the run's own threads (the MLflow import, the power sampler) are not.

Used by ``scripts/gpu-h200.sh`` (part ``profile``) on the default gpt2 run, for issue 19's time to result.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

Key = tuple[str, int, str]  # file, first line, function


class Sampler:
    """Counts, per function, the samples where it is on top of (self) or anywhere in (cumulative) a stack."""

    def __init__(self, thread_id: int, interval_s: float) -> None:
        self.thread_id, self.interval_s = thread_id, interval_s
        self.self_n: Counter[Key] = Counter()
        self.cum_n: Counter[Key] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sample-profile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            frame = sys._current_frames().get(self.thread_id)
            if frame is not None:
                self.record(frame)

    def record(self, frame: FrameType | None) -> None:
        """One sample of the stack whose top is ``frame``."""
        seen: set[Key] = set()
        top = True
        while frame is not None:
            code = frame.f_code
            key = (code.co_filename, code.co_firstlineno, code.co_name)
            if top:
                self.self_n[key] += 1
                top = False
            if key not in seen:
                self.cum_n[key] += 1
                seen.add(key)
            frame = frame.f_back
        self.samples += 1


def package_of(filename: str) -> str:
    """The top-level package of a file under site-packages (or dist-packages), else the file's name."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return Path(filename).name or filename


def _where(key: Key) -> str:
    file, line, name = key
    return f"{name}  ({Path(file).name}:{line})"


def report(sampler: Sampler, wall_s: float, top: int) -> list[str]:
    """The text report of one sampled run."""
    per = wall_s / sampler.samples if sampler.samples else 0.0
    lines = [f"wall {wall_s:.2f} s, {sampler.samples} samples (one per {per * 1000:.1f} ms on average)"]
    for title, counts in (("cumulative", sampler.cum_n), ("self", sampler.self_n)):
        lines.append(f"largest {title} time (s):")
        lines += [f"  {n * per:8.2f}  {_where(key)}" for key, n in counts.most_common(top)]
    packages: Counter[str] = Counter()
    for key, n in sampler.self_n.items():
        packages[package_of(key[0])] += n
    lines.append("self time by package (s):")
    lines += [f"  {n * per:8.2f}  {name}" for name, n in packages.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-m" not in argv or argv.index("-m") + 1 >= len(argv):
        raise SystemExit("usage: sample_profile.py OUT.txt [--interval-s S] [--top N] -m MODULE [ARGS...]")
    cut = argv.index("-m")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--interval-s", type=float, default=0.02)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv[:cut])
    module, module_args = argv[cut + 1], argv[cut + 2 :]
    sampler = Sampler(threading.get_ident(), args.interval_s)
    sys.argv = [module, *module_args]
    code: int | str | None = 0
    start = time.perf_counter()
    sampler.start()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    finally:
        sampler.stop()
        wall_s = time.perf_counter() - start
        args.out.write_text("\n".join(report(sampler, wall_s, args.top)) + "\n")
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
