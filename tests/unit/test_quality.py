"""Quality flags: each rule firing and not firing at its boundary, and evaluate() on clean input."""

from __future__ import annotations

import dataclasses

import pytest

from llem_mlflow.figures.quality import (
    RULE_NAMES,
    THROTTLE_SLOWDOWN_BITS,
    QualityFlag,
    QualityInputs,
    check_energy_incomplete,
    check_energy_per_token,
    check_idle_drift,
    check_net_below_uncertainty,
    check_other_processes,
    check_short_window,
    check_temperature_drift,
    check_throttling,
    evaluate,
    mlflow_tags,
)

CLEAN = QualityInputs(
    window_s=60.0,
    output_tokens=1000,
    net_j=5000.0,
    net_uncertainty_j=50.0,
    counter_update_s=0.1,
    throttle_reasons=[0x0, 0x1, 0x2, 0x10, 0x100, None],
    temperatures_c=[45.0, None, 50.0, 55.0],
    idle_before_w=80.0,
    idle_after_w=84.0,
    other_processes=0,
    energy_per_token_j=10.0,
    power_limit_w=700.0,
    steady_state_requested=True,
)


def _name(flag: QualityFlag | None) -> str | None:
    return None if flag is None else flag.name


def test_clean_input_has_no_flags() -> None:
    assert evaluate(CLEAN) == []
    assert mlflow_tags(evaluate(CLEAN)) == {}


def test_unknown_inputs_fire_nothing() -> None:
    assert evaluate(QualityInputs(window_s=60.0, output_tokens=100)) == []


# net_below_uncertainty ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net_j", "uncertainty_j", "fires"),
    [
        (9.999, 10.0, True),
        (-9.999, 10.0, True),  # the size of net counts, not its sign
        (0.0, 10.0, True),
        (10.0, 10.0, False),  # equal: not below
        (-10.0, 10.0, False),
        (500.0, 10.0, False),
        (None, 10.0, False),
        (5.0, None, False),
    ],
)
def test_net_below_uncertainty(net_j: float | None, uncertainty_j: float | None, fires: bool) -> None:
    flag = check_net_below_uncertainty(net_j, uncertainty_j)
    assert _name(flag) == ("net_below_uncertainty" if fires else None)


# short_window -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window_s", "update_s", "steady", "fires"),
    [
        (0.999, 0.1, False, True),
        (1.0, 0.1, False, False),  # exactly 10 updates
        (1.999, 0.2, False, True),  # the limit follows the counter period
        (2.0, 0.2, False, False),
        (29.999, 0.1, True, True),  # steady state needs 30 s
        (30.0, 0.1, True, False),
        (29.999, 0.1, False, False),
        (0.5, 0.1, True, True),
    ],
)
def test_short_window(window_s: float, update_s: float, steady: bool, fires: bool) -> None:
    assert _name(check_short_window(window_s, update_s, steady)) == ("short_window" if fires else None)


def test_short_window_message_says_which_limit() -> None:
    flag = check_short_window(20.0, 0.1, True)
    assert flag is not None and "30 s" in flag.message


# throttling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (0x4, "SW power cap"),
        (0x8, "HW slowdown"),
        (0x20, "SW thermal slowdown"),
        (0x40, "HW thermal slowdown"),
        (0x80, "HW power brake slowdown"),
    ],
)
def test_throttling_fires_on_each_slowdown_bit(bit: int, name: str) -> None:
    flag = check_throttling([0x0, bit | 0x1, None])
    assert flag is not None and flag.name == "throttling"
    assert name in flag.message
    assert f"0x{bit:x}" in flag.message
    assert "1 of 2 samples" in flag.message  # of the samples with a reading


@pytest.mark.parametrize("bit", [0x1, 0x2, 0x10, 0x100, 0x1 | 0x2 | 0x10 | 0x100])
def test_throttling_ignores_benign_bits(bit: int) -> None:
    assert check_throttling([bit, bit]) is None


def test_throttling_none_and_empty() -> None:
    assert check_throttling([]) is None
    assert check_throttling([None, None]) is None


def test_throttling_names_every_reason_seen() -> None:
    flag = check_throttling([0x4, 0x4 | 0x40, 0x0])
    assert flag is not None
    assert "SW power cap (0x4) in 2 of 3 samples" in flag.message
    assert "HW thermal slowdown (0x40) in 1 of 3 samples" in flag.message
    assert "HW slowdown" not in flag.message


def test_sw_power_cap_fires_only_when_sustained() -> None:
    # Seen on an H200 at ~270 W: the bit in 10 of ~870 window samples (1.1 %) is not a slowdown to flag.
    assert check_throttling([0x4] * 4 + [0x0] * 96 + [None] * 300) is None
    flag = check_throttling([0x4] * 5 + [0x0] * 95)
    assert flag is not None and "5 of 100 samples" in flag.message
    # A hardware or thermal bit fires at once, and the power-cap count is named with it.
    flag = check_throttling([0x4, 0x40] + [0x0] * 198)
    assert flag is not None and "HW thermal slowdown (0x40) in 1 of 200" in flag.message


def test_slowdown_mask() -> None:
    assert THROTTLE_SLOWDOWN_BITS == 0x4 | 0x8 | 0x20 | 0x40 | 0x80


# temperature_drift ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temps", "fires"),
    [
        ([40.0, 50.1], True),
        ([40.0, 50.0], False),  # exactly 10 degC
        ([None, 40.0, 45.0, 50.5, None], True),  # first/last valid samples
        ([40.0, 60.0, 45.0], False),  # last minus first, not the peak
        ([60.0, 40.0], False),  # cooling does not fire
        ([40.0], False),
        ([None, 70.0], False),
        ([], False),
        ([40.0, float("nan"), 55.0], True),
    ],
)
def test_temperature_drift(temps: list[float | None], fires: bool) -> None:
    assert _name(check_temperature_drift(temps)) == ("temperature_drift" if fires else None)


# other_processes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "fires"), [(1, True), (3, True), (0, False), (None, False)])
def test_other_processes(count: int | None, fires: bool) -> None:
    flag = check_other_processes(count)
    assert _name(flag) == ("other_processes" if fires else None)
    if flag is not None:
        assert f"up to {count} compute process(es) besides this one" in flag.message
        assert "processes listed minus this process" in flag.message  # names the counting rule


# idle_drift ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before_w", "after_w", "fires"),
    [
        (100.0, 110.5, True),  # 10.5 W: > 10 % and > 5 W
        (100.0, 89.5, True),  # a fall counts too
        (100.0, 110.0, False),  # exactly 10 %
        (40.0, 45.0, False),  # 12.5 % but exactly 5 W
        (40.0, 45.5, True),  # 13.75 % and 5.5 W
        (300.0, 329.0, False),  # 29 W but under 10 %
        (300.0, 331.0, True),
        (None, 100.0, False),
        (100.0, None, False),
    ],
)
def test_idle_drift(before_w: float | None, after_w: float | None, fires: bool) -> None:
    assert _name(check_idle_drift(before_w, after_w)) == ("idle_drift" if fires else None)


# energy_per_token_out_of_bounds ------------------------------------------------------------------

# power 100 W x 10 s / 1000 tokens = 1.0 J/token; ceiling with the 5 % margin: 1.05 J/token.


@pytest.mark.parametrize(
    ("j_per_token", "limit_w", "fires"),
    [
        (0.0, 100.0, True),
        (-0.1, None, True),
        (float("nan"), None, True),
        (float("inf"), None, True),
        (1e-9, 100.0, False),
        (1.05, 100.0, False),  # exactly at the ceiling
        (1.0501, 100.0, True),
        (1.0, 100.0, False),
        (50.0, None, False),  # limit unknown: only the sign is checked
        (None, 100.0, False),
    ],
)
def test_energy_per_token(j_per_token: float | None, limit_w: float | None, fires: bool) -> None:
    flag = check_energy_per_token(j_per_token, limit_w, 10.0, 1000)
    assert _name(flag) == ("energy_per_token_out_of_bounds" if fires else None)


def test_energy_per_token_ceiling_skipped_without_tokens() -> None:
    assert check_energy_per_token(5.0, 100.0, 10.0, 0) is None


# energy_incomplete ------------------------------------------------------------------------------


@pytest.mark.parametrize(("unknown", "fires"), [(0, False), (1, True), (4, True)])
def test_energy_incomplete_fires_on_any_unknown_delta(unknown: int, fires: bool) -> None:
    flag = check_energy_incomplete(unknown, 4)
    assert _name(flag) == ("energy_incomplete" if fires else None)
    if flag is not None:
        assert flag.message.startswith(f"The energy counter delta of {unknown} of 4 (GPU, measured window)")


# evaluate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"net_j": 10.0}, "net_below_uncertainty"),
        ({"window_s": 20.0, "energy_per_token_j": 1.0}, "short_window"),
        ({"throttle_reasons": [0x0, 0x20]}, "throttling"),
        ({"temperatures_c": [45.0, 60.0]}, "temperature_drift"),
        ({"other_processes": 2}, "other_processes"),
        ({"idle_after_w": 95.0}, "idle_drift"),
        ({"energy_per_token_j": 50.0}, "energy_per_token_out_of_bounds"),
        ({"unknown_gpu_windows": 1, "gpu_windows": 3}, "energy_incomplete"),
    ],
)
def test_evaluate_runs_each_rule(change: dict[str, object], name: str) -> None:
    flags = evaluate(dataclasses.replace(CLEAN, **change))  # type: ignore[arg-type]
    assert [f.name for f in flags] == [name]
    assert mlflow_tags(flags) == {f"llem.quality.{name}": flags[0].message}


def test_evaluate_all_rules_in_order() -> None:
    bad = dataclasses.replace(
        CLEAN,
        net_j=1.0,
        window_s=0.5,
        throttle_reasons=[0x8],
        temperatures_c=[30.0, 70.0],
        other_processes=1,
        idle_after_w=120.0,
        energy_per_token_j=-1.0,
        unknown_gpu_windows=2,
        gpu_windows=4,
    )
    assert [f.name for f in evaluate(bad)] == list(RULE_NAMES)


def test_inputs_are_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLEAN.window_s = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        QualityInputs(60.0, 100)  # type: ignore[call-arg]
