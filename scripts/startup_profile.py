"""Where a run's start-up seconds go: ``python -X importtime`` and ``cProfile`` output, summed for reading.

``python scripts/startup_profile.py IMPORTTIME_TXT [PROFILE]``:

* ``IMPORTTIME_TXT``: the stderr of ``python -X importtime ...`` (lines ``import time: self [us] |
  cumulative | imported package``; other lines are skipped). Printed: the import seconds in total, per
  top-level package (the sum of each module's *self* time, so the packages add up to the total), and the
  slowest modules by cumulative time (a module's own time plus everything it imported first).
* ``PROFILE`` (optional): a ``cProfile`` output file (``python -m cProfile -o PROFILE ...``): the calls
  with the largest cumulative time on the main thread.

Used by ``scripts/gpu-h200.sh`` (part ``profile``) on the default gpt2 run, for issue 19's time to result.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PREFIX = "import time:"


@dataclass(frozen=True)
class ImportLine:
    """One module of an importtime log: its own and cumulative microseconds, and its dotted name."""

    self_us: int
    cumulative_us: int
    module: str

    @property
    def package(self) -> str:
        return self.module.split(".")[0]


def parse_importtime(text: str) -> list[ImportLine]:
    """The module lines of an importtime log (its header and any other output skipped)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith(PREFIX):
            continue
        parts = line[len(PREFIX) :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        rows.append(ImportLine(int(parts[0]), int(parts[1]), parts[2].strip()))
    return rows


def by_package(rows: list[ImportLine]) -> list[tuple[str, float]]:
    """Seconds of own import time per top-level package, largest first."""
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row.package] += row.self_us
    return sorted(((name, us / 1e6) for name, us in totals.items()), key=lambda t: -t[1])


def import_report(rows: list[ImportLine], top: int) -> list[str]:
    """The import part of the report."""
    total_s = sum(r.self_us for r in rows) / 1e6
    lines = [
        f"imports: {len(rows)} modules, {total_s:.2f} s in total (sum of own times)",
        "by package (own s):",
    ]
    lines += [f"  {name:<32} {s:7.2f}" for name, s in by_package(rows)[:top]]
    lines.append("slowest modules (cumulative s):")
    slowest = sorted(rows, key=lambda r: -r.cumulative_us)[:top]
    lines += [f"  {r.module:<56} {r.cumulative_us / 1e6:7.2f}" for r in slowest]
    return lines


def profile_report(path: Path, top: int) -> list[str]:
    """The calls with the largest cumulative time in a cProfile file."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]  # pstats' documented-but-untyped table
    rows = sorted(entries.items(), key=lambda kv: -kv[1][3])[:top]
    lines = [f"profile: {stats.total_tt:.2f} s on the main thread; largest cumulative:"]  # type: ignore[attr-defined]
    for (file, line, name), (_, calls, _, cum_s, _) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        lines.append(f"  {cum_s:7.2f} s  {calls:>7} calls  {name}  ({where})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("importtime", type=Path)
    parser.add_argument("profile", type=Path, nargs="?")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    rows = parse_importtime(args.importtime.read_text(errors="replace"))
    if not rows:
        print(
            f"{args.importtime}: no 'import time:' lines (was python run with -X importtime?)",
            file=sys.stderr,
        )
        return 1
    lines = import_report(rows, args.top)
    if args.profile is not None:
        lines += profile_report(args.profile, args.top)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
