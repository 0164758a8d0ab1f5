"""RAPL zones from a fake powercap tree in tmp_path: discovery, names, sums, wrap-around, unreadable files."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from llem_mlflow.measure.rapl import RaplReader, RaplReading, RaplZone, cpu_energy_j

MAX_UJ = 262143328850  # the usual Intel package range


def zone(parent: Path, dirname: str, name: str, energy_uj: int | None, max_uj: int = MAX_UJ) -> Path:
    path = parent / dirname
    path.mkdir()
    (path / "name").write_text(name + "\n")
    if energy_uj is not None:
        (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def two_socket(tmp_path: Path) -> dict[str, Path]:
    """Two packages with a dram subzone each, a core subzone, psys; sysfs-style top-level links too."""
    root = tmp_path / "powercap"
    root.mkdir()
    (root / "intel-rapl").mkdir()  # the control type folder: no counter of its own
    (root / "intel-rapl" / "enabled").write_text("1\n")
    pkg0 = zone(root, "intel-rapl:0", "package-0", 1_000_000)
    core0 = zone(pkg0, "intel-rapl:0:0", "core", 400_000)
    dram0 = zone(pkg0, "intel-rapl:0:1", "dram", 200_000, max_uj=65532610987)
    pkg1 = zone(root, "intel-rapl:1", "package-1", 5_000_000)
    dram1 = zone(pkg1, "intel-rapl:1:0", "dram", 300_000, max_uj=65532610987)
    psys = zone(root, "intel-rapl:2", "psys", 9_000_000)
    # /sys/class/powercap links every zone at the top as well: each must count once.
    (root / "intel-rapl:0:0").symlink_to(core0)
    (root / "intel-rapl:0:1").symlink_to(dram0)
    (root / "intel-rapl:1:0").symlink_to(dram1)
    return {"root": root, "pkg0": pkg0, "dram0": dram0, "pkg1": pkg1, "dram1": dram1, "psys": psys}


def open_ok(root: Path) -> RaplReader:
    reader, reason = RaplReader.open(root)
    assert reason is None
    assert reader is not None
    return reader


def test_discovery_keeps_package_and_dram_with_unique_names(two_socket: dict[str, Path]) -> None:
    reader = open_ok(two_socket["root"])
    assert [(z.key, z.name, z.kind) for z in reader.zones] == [
        ("package-0", "package-0", "package"),
        ("dram-0", "dram", "dram"),
        ("package-1", "package-1", "package"),
        ("dram-1", "dram", "dram"),
    ]
    assert reader.zones[1].path.resolve() == two_socket["dram0"].resolve()
    assert reader.zones[1].max_energy_range_uj == 65532610987
    assert reader.zones[0].max_energy_range_uj == MAX_UJ
    assert sorted(reader.skipped) == [
        "intel-rapl:0:0 (core): part of its package, already counted there",
        "intel-rapl:2 (psys): whole platform, overlaps package and dram",
    ]


def test_read_and_sums(two_socket: dict[str, Path]) -> None:
    reader = open_ok(two_socket["root"])
    start = reader.read()
    assert start == {"package-0": 1_000_000, "dram-0": 200_000, "package-1": 5_000_000, "dram-1": 300_000}
    set_energy(two_socket["pkg0"], 11_000_000)  # +10 J
    set_energy(two_socket["pkg1"], 7_500_000)  # +2.5 J
    set_energy(two_socket["dram0"], 1_200_000)  # +1 J
    set_energy(two_socket["dram1"], 800_000)  # +0.5 J
    set_energy(two_socket["psys"], 99_000_000)  # never counted
    end = reader.read()
    assert end is not None
    deltas = reader.delta_j(start, end)
    assert deltas == {"package-0": 10.0, "dram-0": 1.0, "package-1": 2.5, "dram-1": 0.5}
    assert cpu_energy_j(deltas) == (12.5, 1.5)


def test_wrap_around_when_end_below_start(two_socket: dict[str, Path]) -> None:
    reader = open_ok(two_socket["root"])
    start = {"package-0": MAX_UJ - 1_000_000, "dram-0": 10, "package-1": 0, "dram-1": 0}
    end = {"package-0": 2_000_000, "dram-0": 20, "package-1": 0, "dram-1": 0}
    # 1 J up to the top, 1 uJ from the top value to 0, then 2 J: (end - start) mod (max + 1)
    assert reader.delta_j(start, end)["package-0"] == pytest.approx(3.000001)
    assert reader.delta_j(start, end)["dram-0"] == pytest.approx(10e-6)


def test_delta_keeps_keys_read_at_both_edges(two_socket: dict[str, Path]) -> None:
    reader = open_ok(two_socket["root"])
    assert reader.delta_j({"package-0": 0, "dram-0": 5}, {"package-0": 3_000_000}) == {"package-0": 3.0}


def test_cpu_energy_none_for_missing_kind() -> None:
    assert cpu_energy_j({"package-0": 4.0, "package-1": 1.0}) == (5.0, None)
    assert cpu_energy_j({}) == (None, None)


def test_wrap_period() -> None:
    z = RaplZone(
        key="package-0", name="package-0", kind="package", path=Path("."), max_energy_range_uj=MAX_UJ
    )
    assert z.wrap_period_s(200.0) == pytest.approx(1310.716644, rel=1e-6)  # ~22 min
    with pytest.raises(ValueError, match="power_w"):
        z.wrap_period_s(0.0)


def test_no_powercap_folder(tmp_path: Path) -> None:
    reader, reason = RaplReader.open(tmp_path / "absent")
    assert reader is None
    assert reason is not None
    assert "no powercap folder" in reason
    assert "\n" not in reason


def test_only_uncounted_zones(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "psys", 1)
    reader, reason = RaplReader.open(tmp_path)
    assert reader is None
    assert reason == f"CPU energy not reported: no RAPL package or dram zone under {tmp_path}."


def test_energy_file_is_a_directory(two_socket: dict[str, Path]) -> None:
    (two_socket["dram1"] / "energy_uj").unlink()
    (two_socket["dram1"] / "energy_uj").mkdir()
    reader, reason = RaplReader.open(two_socket["root"])
    assert reader is None
    assert reason is not None
    link = two_socket["root"] / "intel-rapl:1:0" / "energy_uj"  # the zone as /sys/class/powercap links it
    assert reason == f"CPU energy not reported: cannot read {link} (Is a directory)."
    assert "\n" not in reason


def test_energy_file_missing_is_not_a_partial_sum(two_socket: dict[str, Path]) -> None:
    (two_socket["pkg1"] / "energy_uj").unlink()
    reader, reason = RaplReader.open(two_socket["root"])
    assert reader is None
    assert reason == f"CPU energy not reported: {two_socket['pkg1']} has no energy_uj file."


def test_permission_denied_says_root_only(two_socket: dict[str, Path]) -> None:
    def read_text(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    reader, reason = RaplReader.open(two_socket["root"], read_text=read_text)
    assert reader is None
    assert reason is not None
    assert "readable by root only" in reason
    assert str(two_socket["pkg0"] / "energy_uj") in reason


def test_read_failing_mid_run_returns_none(two_socket: dict[str, Path]) -> None:
    calls = {"fail": False}

    def read_text(path: Path) -> str:
        if calls["fail"] and path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    reader, _ = RaplReader.open(two_socket["root"], read_text=read_text)
    assert reader is not None
    calls["fail"] = True
    assert reader.read() is None
    assert reader.error is not None and "readable by root only" in reader.error
    calls["fail"] = False
    assert reader.read() is not None
    assert reader.error is None


def test_garbage_counter_is_unreadable(two_socket: dict[str, Path]) -> None:
    (two_socket["pkg0"] / "energy_uj").write_text("not a number\n")
    reader, reason = RaplReader.open(two_socket["root"])
    assert reader is None
    assert reason is not None and "cannot read" in reason


def test_mmio_duplicate_is_skipped(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0", 1)
    zone(tmp_path, "intel-rapl-mmio:0", "package-0", 1)
    reader = open_ok(tmp_path)
    assert [z.key for z in reader.zones] == ["package-0"]
    assert reader.zones[0].path == tmp_path / "intel-rapl:0"
    assert reader.skipped == ["intel-rapl-mmio:0 (package-0): same counters as intel-rapl, read there"]


def test_other_control_type_and_unnumbered_names(tmp_path: Path) -> None:
    """A control type other than intel-rapl is read the same way; unnumbered names get the package number."""
    zone(tmp_path, "amd-rapl:0", "package", 1)
    zone(tmp_path, "amd-rapl:1", "package", 2)
    reader = open_ok(tmp_path)
    assert [z.key for z in reader.zones] == ["package-0", "package-1"]
    assert reader.read() == {"package-0": 1, "package-1": 2}


def test_colliding_keys_get_a_suffix(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 1)
    zone(pkg, "intel-rapl:0:0", "dram", 2)
    zone(pkg, "intel-rapl:0:1", "dram", 3)
    reader = open_ok(tmp_path)
    assert [z.key for z in reader.zones] == ["package-0", "dram-0", "dram-0-2"]


# ---------------------------------------------------------------- a wrap inside a window is reported


def test_a_wrap_is_warned_with_its_period_at_the_power_seen(two_socket: dict[str, Path]) -> None:
    reader = open_ok(two_socket["root"])
    start = RaplReading({"package-0": MAX_UJ - 1_000_000, "dram-0": 10, "package-1": 0, "dram-1": 0}, 100.0)
    end = RaplReading({"package-0": 2_000_000, "dram-0": 20, "package-1": 5, "dram-1": 0}, 110.0)
    assert reader.delta_j(start, end)["package-0"] == pytest.approx(3.000001)
    [warning] = reader.warnings  # package-0 only: the others went up
    # 3.000001 J in 10 s is 0.3 W: the 262 kJ range lasts (MAX_UJ + 1) / 1e6 / 0.3 s = 873,811 s at that power
    assert warning.startswith("CPU energy, RAPL zone package-0: the counter wrapped during the window")
    assert (
        "one wrap was assumed (3.0 J)" in warning and "At the 0.3 W seen it wraps every 873811 s" in warning
    )
    reader.delta_j(end, RaplReading({**end, "package-0": 3_000_000}, 120.0))
    assert len(reader.warnings) == 1  # no wrap, no warning


def test_a_wrap_between_plain_reads_is_warned_without_a_period(two_socket: dict[str, Path]) -> None:
    reader = open_ok(two_socket["root"])
    reader.delta_j({"dram-1": 65532610987}, {"dram-1": 5})
    assert len(reader.warnings) == 1 and "RAPL zone dram-1" in reader.warnings[0]
    assert "wraps every" not in reader.warnings[0]


def test_reads_know_when_they_were_taken(two_socket: dict[str, Path]) -> None:
    reader = open_ok(two_socket["root"])
    before = time.time()
    reading = reader.read()
    assert isinstance(reading, RaplReading) and before <= reading.at_s <= time.time()


def test_a_wrap_in_a_measured_window_reaches_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.measure import stages as measure
    from llem_mlflow.run.execute import execute
    from tests.fakes import FakeBackend

    package = RaplZone("package-0", "package-0", "package", tmp_path / "intel-rapl:0", MAX_UJ)
    counter = itertools.cycle([MAX_UJ - 1_000_000, 2_000_000])  # every window's end is past the wrap
    reader = RaplReader([package], [], read_text=lambda path: f"{next(counter)}\n")
    monkeypatch.setattr(measure, "_open_rapl", lambda: (reader, None))
    cfg = ExperimentConfig(n=2, batch_size=1, max_input_tokens=4, max_output_tokens=2, mlflow=False,
                           output_dir=str(tmp_path / "out"))  # fmt: skip
    result = execute(cfg, backend=FakeBackend(), store_probe=lambda c: None).result
    assert result.cpu_energy is not None and result.cpu_energy.package_j == pytest.approx(3.000001)
    wraps = [
        w for w in result.warnings if w.startswith("CPU energy, RAPL zone package-0: the counter wrapped")
    ]
    assert len(wraps) == 1, result.warnings
