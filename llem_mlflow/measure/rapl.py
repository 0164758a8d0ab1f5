"""CPU energy from the Linux powercap interface (RAPL), where this process may read it.

No vendor library: the kernel's powercap sysfs files are read as text (root ``/sys/class/powercap``,
injectable for tests, as is the function that reads one file).

Rules:

- **Discovery.** A zone is a directory named ``<control-type>:<N>[:<M>...]`` (``intel-rapl:0``,
  ``intel-rapl:0:1``, ``intel-rapl-mmio:0``) holding ``name``, ``energy_uj`` and
  ``max_energy_range_uj``. Zones are looked for among the root's entries and one level inside each
  zone (the sysfs tree nests subzones in their package, and ``/sys/class/powercap`` also links every
  zone at the top); a zone reached twice (same resolved path) counts once, under the path met first
  in sorted order (the top-level link in sysfs). AMD Zen CPUs appear under the same ``intel-rapl``
  control type (package and core domains, no dram); any other control type with the same files is
  read the same way. A counted zone (below) without a readable ``energy_uj`` or
  ``max_energy_range_uj`` makes CPU energy unreported as a whole, never a partial sum.
- **What counts.** ``package*`` zones (``package-0``, ``package-0-die-1``) and ``dram*`` zones are
  reported. ``core`` and ``uncore`` are skipped (they are parts of their package, already in it),
  ``psys`` is skipped (the whole platform: it overlaps package and dram), and so is any other name.
  When several control types expose counted zones, one is read: ``intel-rapl`` if present, else the
  alphabetically first; the others (``intel-rapl-mmio`` is another path to the same package counter)
  are skipped. ``reader.skipped`` lists every skipped zone with why.
- **Names.** A zone's key is its ``name`` when the kernel already numbered it (ends in ``-<digits>``:
  ``package-0``), else ``<name>-<N>`` with ``N`` the package number from the directory
  (``intel-rapl:1:0`` named ``dram`` is ``dram-1``); a key still taken gets ``-2``, ``-3``, ...
- **Units.** Counters are integer microjoules (``*_uj``); ``delta_j`` and ``cpu_energy_j`` give joules.
- **Wrap-around.** A counter runs from 0 to ``max_energy_range_uj`` and then restarts at 0, so when
  ``end < start`` the delta is ``(end - start) mod (max_energy_range_uj + 1)``: exactly one wrap is
  assumed (the kernel derives the range from a 32-bit register, so the wrap is off by at most one
  hardware energy unit, tens of microjoules). More than one wrap in a window is not detectable from
  two reads: a counter wraps every ``(max_energy_range_uj + 1) / 1e6 / power_w`` seconds
  (``RaplZone.wrap_period_s``), e.g. the usual Intel package range of ~262 kJ wraps after ~22 min at
  200 W and ~13 min at 350 W; keep windows shorter than the shortest zone's period at the highest
  power the CPU can draw. So every wrap is reported: ``delta_j`` adds a line to ``reader.warnings``
  for each zone whose counter wrapped, naming the wrap period at the power the delta shows (each read
  knows when it was taken, ``RaplReading.at_s``); the run copies them into the result's warnings.
- **Never raises into the run.** ``RaplReader.open`` returns ``(reader, None)`` or ``(None, reason)``,
  the reason one line saying why CPU energy is not reported: no powercap folder (not Linux, a container
  without ``/sys/class/powercap``, no RAPL driver), no package or dram zone, or a file not readable.
  Since the 2020 PLATYPUS fix (CVE-2020-8694) ``energy_uj`` is readable by root only on most kernels;
  ``open`` reads every counted zone once, so a root-only counter is found there, not mid-run.
  ``reader.read()`` returns ``None`` (and sets ``reader.error``) if a read fails later; all zones are
  read, or none.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

POWERCAP_ROOT = Path("/sys/class/powercap")
PREFERRED_CONTROL_TYPE = "intel-rapl"

_ZONE_DIR = re.compile(r"^(?P<control_type>[A-Za-z0-9_.-]+):(?P<ids>\d+(?::\d+)*)$")
_NUMBERED = re.compile(r"-\d+$")

ReadText = Callable[[Path], str]


def _read_text(path: Path) -> str:
    return path.read_text(encoding="ascii")


@dataclass(frozen=True)
class RaplZone:
    """One counted RAPL zone: ``key`` is unique within a reader (``package-0``, ``dram-0``)."""

    key: str
    name: str  # the kernel's ``name`` file: "package-0", "dram", ...
    kind: str  # "package" | "dram"
    path: Path  # the zone directory
    max_energy_range_uj: int

    def wrap_period_s(self, power_w: float) -> float:
        """Seconds this counter takes to wrap once at a steady ``power_w`` watts."""
        if power_w <= 0:
            raise ValueError(f"power_w must be > 0, got {power_w!r}")
        return (self.max_energy_range_uj + 1) / 1e6 / power_w


class RaplReading(dict[str, int]):
    """Every counted zone's counter in microjoules by key, and when it was read (``at_s``, epoch s)."""

    def __init__(self, values: Mapping[str, int], at_s: float) -> None:
        super().__init__(values)
        self.at_s = at_s


@dataclass(frozen=True)
class _Found:
    control_type: str
    ids: tuple[int, ...]
    path: Path
    name: str


def _kind(name: str) -> str | None:
    if name.startswith("package"):
        return "package"
    if name.startswith("dram"):
        return "dram"
    return None


def _skip_reason(name: str) -> str:
    if name in ("core", "uncore"):
        return "part of its package, already counted there"
    if name == "psys":
        return "whole platform, overlaps package and dram"
    return "not a package or dram domain"


def _zone_dirs(root: Path) -> list[tuple[str, tuple[int, ...], Path]]:
    """Zone directories among ``root``'s entries and one level inside each zone, deduplicated."""
    seen: set[Path] = set()
    found: list[tuple[str, tuple[int, ...], Path]] = []

    def visit(folder: Path) -> list[Path]:
        zones = []
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return []
        for entry in entries:
            match = _ZONE_DIR.match(entry.name)
            if match is None or not entry.is_dir():
                continue
            try:
                resolved = entry.resolve()
            except (OSError, RuntimeError):  # a symlink loop
                continue
            if resolved in seen:
                continue
            seen.add(resolved)
            ids = tuple(int(i) for i in match["ids"].split(":"))
            found.append((match["control_type"], ids, entry))
            zones.append(entry)
        return zones

    for zone in visit(root):
        visit(zone)
    return found


def _unreadable(path: Path, error: Exception) -> str:
    if isinstance(error, PermissionError):
        return (
            f"CPU energy not reported: {path} is readable by root only on this kernel "
            "(since the 2020 PLATYPUS fix); run as root or have an admin grant read access."
        )
    text = (error.strerror if isinstance(error, OSError) else None) or str(error).strip()
    detail = text.splitlines()[0] if text else type(error).__name__
    return f"CPU energy not reported: cannot read {path} ({detail})."


class RaplReader:
    """Reads the counted RAPL zones; build it with ``RaplReader.open``."""

    def __init__(self, zones: list[RaplZone], skipped: list[str], read_text: ReadText = _read_text):
        self.zones = zones
        self.skipped = skipped  # "intel-rapl:0:0 (core): part of its package, already counted there"
        self.error: str | None = None  # why the last ``read()`` returned None
        self.warnings: list[str] = []  # one per counter wrap ``delta_j`` took a delta across
        self._read_text = read_text

    @classmethod
    def open(
        cls, root: Path = POWERCAP_ROOT, read_text: ReadText = _read_text
    ) -> tuple[RaplReader | None, str | None]:
        """Discover the zones under ``root`` and read each once: ``(reader, None)`` or ``(None, reason)``."""
        if not root.is_dir():
            return None, (
                f"CPU energy not reported: no powercap folder at {root} "
                "(not Linux, a container without it, or no RAPL driver loaded)."
            )
        found: list[_Found] = []
        skipped: list[str] = []
        for control_type, ids, path in _zone_dirs(root):
            label = path.name
            try:
                name = read_text(path / "name").strip()
            except (OSError, ValueError):
                skipped.append(f"{label}: no readable name file")
                continue
            if _kind(name) is None:
                skipped.append(f"{label} ({name}): {_skip_reason(name)}")
                continue
            found.append(_Found(control_type, ids, path, name))
        if not found:
            return None, f"CPU energy not reported: no RAPL package or dram zone under {root}."

        types = sorted({f.control_type for f in found})
        chosen = PREFERRED_CONTROL_TYPE if PREFERRED_CONTROL_TYPE in types else types[0]
        zones: list[RaplZone] = []
        used: set[str] = set()
        for f in sorted(found, key=lambda f: (f.control_type, f.ids)):
            if f.control_type != chosen:
                skipped.append(f"{f.path.name} ({f.name}): same counters as {chosen}, read there")
                continue
            if not (f.path / "energy_uj").exists():
                return None, f"CPU energy not reported: {f.path} has no energy_uj file."
            max_path = f.path / "max_energy_range_uj"
            try:
                max_uj = int(read_text(max_path).strip())
            except (OSError, ValueError) as error:
                return None, _unreadable(max_path, error)
            key = f.name if _NUMBERED.search(f.name) else f"{f.name}-{f.ids[0]}"
            if key in used:
                suffix = 2
                while f"{key}-{suffix}" in used:
                    suffix += 1
                key = f"{key}-{suffix}"
            used.add(key)
            kind = _kind(f.name)
            assert kind is not None
            zones.append(RaplZone(key=key, name=f.name, kind=kind, path=f.path, max_energy_range_uj=max_uj))

        reader = cls(zones, skipped, read_text)
        if reader.read() is None:
            return None, reader.error
        return reader, None

    def read(self) -> RaplReading | None:
        """Every zone's counter in microjoules by key, or None (with ``self.error``) if any read fails."""
        at_s = time.time()
        values: dict[str, int] = {}
        for zone in self.zones:
            path = zone.path / "energy_uj"
            try:
                values[zone.key] = int(self._read_text(path).strip())
            except (OSError, ValueError) as error:
                self.error = _unreadable(path, error)
                return None
        self.error = None
        return RaplReading(values, at_s)

    def delta_j(self, start: Mapping[str, int], end: Mapping[str, int]) -> dict[str, float]:
        """Joules per zone key between two reads, one wrap assumed when a counter went backwards.

        Only keys of this reader present in both reads are returned. Each wrap adds a line to
        ``self.warnings`` (with the wrap period at the power seen, when both reads are ``RaplReading``s).
        """
        deltas: dict[str, float] = {}
        for zone in self.zones:
            if zone.key not in start or zone.key not in end:
                continue
            delta_uj = end[zone.key] - start[zone.key]
            if delta_uj < 0:
                delta_uj %= zone.max_energy_range_uj + 1
                self.warnings.append(_wrap_warning(zone, delta_uj / 1e6, _seconds_between(start, end)))
            deltas[zone.key] = delta_uj / 1e6
        return deltas


def _seconds_between(start: Mapping[str, int], end: Mapping[str, int]) -> float | None:
    if isinstance(start, RaplReading) and isinstance(end, RaplReading) and end.at_s > start.at_s:
        return end.at_s - start.at_s
    return None


def _wrap_warning(zone: RaplZone, delta_j: float, seconds: float | None) -> str:
    """What a counter wrap inside a window means for the CPU energy of ``zone``."""
    text = (
        f"CPU energy, RAPL zone {zone.key}: the counter wrapped during the window (it restarts at 0 "
        f"after {zone.max_energy_range_uj} uJ); one wrap was assumed ({delta_j:.1f} J)."
    )
    if seconds is None or delta_j <= 0:
        return text
    power_w = delta_j / seconds
    return (
        f"{text} At the {power_w:.1f} W seen it wraps every {zone.wrap_period_s(power_w):.0f} s: a window "
        "longer than that would hide a second wrap and read too low."
    )


def cpu_energy_j(deltas: Mapping[str, float]) -> tuple[float | None, float | None]:
    """(package joules, dram joules) summed over zone keys; None where no key of that kind is present."""
    package = [value for key, value in deltas.items() if _kind(key) == "package"]
    dram = [value for key, value in deltas.items() if _kind(key) == "dram"]
    return (sum(package) if package else None, sum(dram) if dram else None)
