"""The regression gate: is a candidate run worse than a baseline run by more than a threshold? Pure: no
MLflow, no files (``llem-mlflow compare --baseline RUN --fail-if-worse PCT`` reads the runs and exits
with ``GateDecision.code``).

What is compared. One metric (``GATED_METRICS``: an MLflow metric name, read per cycle from
``cycles.records``), over each run's complete cycles: a cycle an interrupt cut short (``partial`` set)
and a cycle whose value is unknown (None) are left out. Each run needs ``MIN_CYCLES`` (3) such cycles.

When the runs cannot be compared (code 3, one line naming the difference). Either run is
``interrupted``; the runs differ in ``scenario``, ``measurement_methodology``, hash recipe
(``resolved.recipe``, read as ``compare`` reads it), GPU model (``environment_snapshot.gpus[0].name``,
"no GPU" when there is none) or driver version; the metric is not one of ``GATED_METRICS`` or is null in
a run (no per-cycle values); a run has fewer than ``MIN_CYCLES`` complete cycles with a known value; a
value is not finite or not positive (the test takes logarithms). Settings such as batch size may differ
(a gate may judge a config change); the Markdown names those that do (``compare.differing_settings``).

The test. Welch's t on the logarithms of the per-cycle values, one-sided at 95 %. Ratios are what a
"worse by PCT" threshold is about, and the per-cycle figures are positive, so the quantity tested is
``d = mean(ln candidate) - mean(ln baseline)``, the log of the ratio of the geometric means. Its standard
error is ``se = sqrt(s_b^2 / n_b + s_c^2 / n_c)`` (sample variances of the logs, ddof 1) and its degrees
of freedom are Welch-Satterthwaite's, ``df = se^4 / ((s_b^2/n_b)^2/(n_b-1) + (s_c^2/n_c)^2/(n_c-1))``,
fractional. For a lower-is-better metric (J/token, seconds) the candidate is worse by more than PCT only
when the lower bound of the one-sided 95 % interval, ``d - t(0.95, df) x se``, is above
``ln(1 + PCT/100)``: code 1. For a higher-is-better metric (tokens/s) the mirror: the upper bound
``d + t(0.95, df) x se`` is below ``ln(1 - PCT/100)`` (never, for PCT >= 100). "Worse by PCT" is thus
the same change % the table shows (candidate / baseline - 1, from the geometric means), +PCT or -PCT.
Otherwise code 0: within the threshold, or beyond it but not significantly (the line says which). When
every value in both runs is the same in each run (se = 0), the interval is the point ``d`` itself.
The table also shows a two-sided 95 % interval of the change, ``exp(d +- t(0.975, df) x se) - 1``.

The t quantile. ``stats.t_quantile_975`` serves integer df only (a table and an expansion), and Welch's
df is fractional, so ``t_quantile`` inverts the Student t CDF itself: the upper tail
``P(T > t) = I_x(df/2, 1/2) / 2`` with ``x = df / (df + t^2)`` (Abramowitz & Stegun 26.7.1 with 26.5.27),
the regularized incomplete beta ``I`` from its continued fraction (modified Lentz; A&S 26.5.8, as in
Numerical Recipes' ``betacf``), then bisection on t to 1e-15 relative. Against scipy.stats.t.ppf its
relative error is below 1e-11 for df up to 1000 (tests/unit/test_gate.py checks 1e-9 over df 1..200 and
fractional df); ``lgamma`` cancellation lets it grow to ~1e-8 at df 1e7, far beyond any count of cycles.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from llem_mlflow.figures.stats import MIN_INTERVAL_N
from llem_mlflow.results.compare import differing_settings, settings_of
from llem_mlflow.results.schema import ExperimentResult

#: MLflow metric name -> (CycleRecord attribute holding its per-cycle value, lower is better).
GATED_METRICS: dict[str, tuple[str, bool]] = {
    "energy/per_output_token_j": ("energy_per_output_token_j", True),
    "energy/net_per_output_token_j": ("net_energy_per_output_token_j", True),
    "throughput/output_tokens_per_s": ("output_tokens_per_s", False),
    "time/cycle_s": ("duration_s", True),
}
DEFAULT_METRIC = "energy/per_output_token_j"
#: Fewest complete cycles with a known value each run needs (the fewest ``stats`` gives an interval from).
MIN_CYCLES = MIN_INTERVAL_N
PASS, WORSE, CANNOT_COMPARE = 0, 1, 3
_VERDICT = {PASS: "pass", WORSE: "worse", CANNOT_COMPARE: "cannot compare"}


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: ``code`` 0 pass, 1 worse, 3 cannot compare; ``line`` says why in one line.

    ``baseline_mean``/``candidate_mean`` are geometric means of the per-cycle values; ``change_pct`` is
    their ratio - 1 in %, ``change_ci95`` its two-sided 95 % interval in %, ``bound_pct`` the one-sided
    95 % bound the threshold is tested against (lower bound for lower-is-better metrics, upper bound
    otherwise). The numbers are None where the gate could not compute them (code 3).
    """

    code: int
    line: str
    markdown: str
    metric: str
    threshold_pct: float
    baseline_mean: float | None = None
    candidate_mean: float | None = None
    change_pct: float | None = None
    change_ci95: tuple[float, float] | None = None
    bound_pct: float | None = None
    baseline_n: int | None = None
    candidate_n: int | None = None
    df: float | None = None  # Welch-Satterthwaite; math.inf when both runs' values do not vary


@dataclass(frozen=True)
class Welch:
    """Welch's t on logs: ``log_ratio`` = mean(ln candidate) - mean(ln baseline), its ``se`` and ``df``."""

    log_ratio: float
    se: float
    df: float

    def bounds(self, p: float) -> tuple[float, float]:
        """The interval ``log_ratio -+ t(p, df) x se`` (p = 0.95: one-sided bounds; 0.975: two-sided)."""
        half = t_quantile(p, self.df) * self.se if self.se > 0 else 0.0
        return self.log_ratio - half, self.log_ratio + half


def decide(
    baseline: ExperimentResult,
    candidate: ExperimentResult,
    *,
    worse_pct: float,
    metric: str = DEFAULT_METRIC,
) -> GateDecision:
    """Whether ``candidate`` is worse than ``baseline`` in ``metric`` by more than ``worse_pct`` % (see the
    module docstring). ``ValueError`` when ``worse_pct`` is negative or not finite."""
    if not math.isfinite(worse_pct) or worse_pct < 0:
        raise ValueError(f"the threshold must be a finite percentage >= 0, got {worse_pct!r}")
    reason = _refusal(baseline, candidate, metric)
    base_values: list[float] = []
    cand_values: list[float] = []
    if reason is None:
        attr = GATED_METRICS[metric][0]
        base_values, reason = _values(baseline, attr, metric, "baseline")
    if reason is None:
        cand_values, reason = _values(candidate, attr, metric, "candidate")
    if reason is not None:
        line = f"CANNOT COMPARE {metric}: {reason}"
        markdown = f"### Regression gate: cannot compare\n\n{line}\n"
        return GateDecision(CANNOT_COMPARE, line, markdown, metric, worse_pct)
    return _judge(base_values, cand_values, metric, worse_pct, _settings_note(baseline, candidate))


def welch_log(baseline: Sequence[float], candidate: Sequence[float]) -> Welch:
    """Welch's t statistics of ln(candidate) - ln(baseline); each series needs 2 or more positive values."""
    if len(baseline) < 2 or len(candidate) < 2:
        raise ValueError("Welch's test needs at least 2 values per run")
    logs_b, logs_c = [math.log(v) for v in baseline], [math.log(v) for v in candidate]
    vb, vc = statistics.variance(logs_b) / len(logs_b), statistics.variance(logs_c) / len(logs_c)
    se2 = vb + vc
    d = statistics.fmean(logs_c) - statistics.fmean(logs_b)
    if se2 == 0:
        return Welch(d, 0.0, math.inf)
    df = se2**2 / (vb**2 / (len(logs_b) - 1) + vc**2 / (len(logs_c) - 1))
    return Welch(d, math.sqrt(se2), df)


def _refusal(baseline: ExperimentResult, candidate: ExperimentResult, metric: str) -> str | None:
    """Why the two runs cannot be gated against each other (before reading values), or None."""
    if metric not in GATED_METRICS:
        return f"unknown metric; the gate knows {', '.join(GATED_METRICS)}"
    for label, r in (("baseline", baseline), ("candidate", candidate)):
        if r.status == "interrupted":
            return f"the {label} run was interrupted; gate only completed runs"
    for name, read in _MUST_MATCH:
        b, c = read(baseline), read(candidate)
        if b != c:
            return f"the runs differ in {name} (baseline {b}, candidate {c}); gate runs measured alike"
    return None


def _recipe(r: ExperimentResult) -> str:
    """The hash recipe, read as ``compare`` reads it."""
    return str(r.resolved.recipe) if r.resolved is not None else "none (before recipe 2)"


def _gpu(r: ExperimentResult) -> str:
    gpus = r.environment_snapshot.gpus
    return gpus[0].name if gpus else "no GPU"


#: What must be the same in both runs (see the module docstring), in the order it is checked.
_MUST_MATCH = (
    ("scenario", lambda r: r.scenario),
    ("measurement_methodology", lambda r: r.measurement_methodology),
    ("hash recipe", _recipe),
    ("GPU model", _gpu),
    ("driver version", lambda r: r.environment_snapshot.driver_version or "unknown"),
)


def _values(r: ExperimentResult, attr: str, metric: str, label: str) -> tuple[list[float], str | None]:
    """The known values of complete cycles, or ([], why they cannot be gated)."""
    if r.cycles is None or not r.cycles.records:
        return [], f"the {label} run has no per-cycle values (written before cycles existed)"
    complete = [rec for rec in r.cycles.records if rec.partial is None]
    raw: list[float | None] = [getattr(rec, attr) for rec in complete]
    values = [float(v) for v in raw if v is not None]
    if not values:
        return [], f"{metric} is null in every {label} cycle (not measured)"
    if len(values) < MIN_CYCLES:
        return [], (
            f"the {label} run has {len(values)} complete cycle(s) with a known value, the gate needs "
            f"{MIN_CYCLES} (run with cycles: {MIN_CYCLES} or more)"
        )
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        return [], f"a {label} cycle's value is {bad[0]:g}, not finite and positive: no logarithm to test"
    return values, None


def _judge(
    base: list[float], cand: list[float], metric: str, worse_pct: float, settings_note: str
) -> GateDecision:
    """The verdict on two series of positive values (at least ``MIN_CYCLES`` each)."""
    _, lower_is_better = GATED_METRICS[metric]
    w = welch_log(base, cand)
    one_low, one_high = w.bounds(0.95)
    two_low, two_high = w.bounds(0.975)
    if lower_is_better:
        bound, limit_pct = one_low, worse_pct
        worse = bound > math.log1p(worse_pct / 100)
    else:
        bound, limit_pct = one_high, -worse_pct
        worse = worse_pct < 100 and bound < math.log1p(-worse_pct / 100)
    decision = GateDecision(
        code=WORSE if worse else PASS,
        line="",
        markdown="",
        metric=metric,
        threshold_pct=worse_pct,
        baseline_mean=math.exp(statistics.fmean(math.log(v) for v in base)),
        candidate_mean=math.exp(statistics.fmean(math.log(v) for v in cand)),
        change_pct=math.expm1(w.log_ratio) * 100,
        change_ci95=(math.expm1(two_low) * 100, math.expm1(two_high) * 100),
        bound_pct=math.expm1(bound) * 100,
        baseline_n=len(base),
        candidate_n=len(cand),
        df=w.df,
    )
    line = _line(decision, lower_is_better, limit_pct)
    return replace(decision, line=line, markdown=_markdown(decision, line, lower_is_better, settings_note))


def _pct(x: float) -> str:
    return f"{x:+.1f} %"


def _line(g: GateDecision, lower_is_better: bool, limit_pct: float) -> str:
    """One line: the verdict, the change with its interval, and the bound tested against the threshold."""
    # _judge sets every number before it asks for the line
    assert g.change_pct is not None and g.change_ci95 is not None and g.bound_pct is not None
    side = "lower" if lower_is_better else "upper"
    low, high = g.change_ci95
    change = f"{g.metric} changed {_pct(g.change_pct)} (95 % CI {_pct(low)} to {_pct(high)})"
    tail = (
        f"geometric means {g.baseline_mean:.5g} -> {g.candidate_mean:.5g}, "
        f"{g.baseline_n} vs {g.candidate_n} cycles, Welch df {g.df:.1f}"
    )
    bound = f"one-sided 95 % {side} bound {_pct(g.bound_pct)}"
    beyond = g.change_pct > limit_pct if lower_is_better else g.change_pct < limit_pct
    threshold = f"the {_pct(limit_pct)} threshold"
    if g.code == WORSE:
        verdict = f"FAIL (worse): {change}; its {bound} is beyond {threshold}"
    elif beyond:
        verdict = (
            f"PASS (not significant): {change}, beyond {threshold} but not significantly: "
            f"its {bound} is not beyond it; more cycles would resolve it"
        )
    else:
        verdict = f"PASS: {change}, within {threshold} ({bound})"
    return f"{verdict} ({tail})"


def _markdown(g: GateDecision, line: str, lower_is_better: bool, settings_note: str) -> str:
    """A short Markdown block: heading, one table row of numbers, the reason line, differing settings."""
    assert g.change_pct is not None and g.change_ci95 is not None  # _judge set them
    better = "lower" if lower_is_better else "higher"
    limit = _pct(g.threshold_pct if lower_is_better else -g.threshold_pct)
    rows = [
        f"### Regression gate: {_VERDICT[g.code]}",
        "",
        "| metric | baseline mean | baseline cycles | candidate mean | candidate cycles | change "
        "| 95 % interval | threshold | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| `{g.metric}` ({better} is better) | {g.baseline_mean:.5g} | {g.baseline_n} "
        f"| {g.candidate_mean:.5g} | {g.candidate_n} | {_pct(g.change_pct)} "
        f"| {_pct(g.change_ci95[0])} to {_pct(g.change_ci95[1])} | {limit} | **{_VERDICT[g.code]}** |",
        "",
        line,
        "",
        "Means are geometric means of the per-cycle values; the test is Welch's t on their logarithms, "
        "one-sided at 95 %.",
    ]
    if settings_note:
        rows += ["", settings_note]
    return "\n".join(rows) + "\n"


def _settings_note(baseline: ExperimentResult, candidate: ExperimentResult) -> str:
    """'Settings that differ: ...' for the Markdown, or '' when none do."""
    pair = [settings_of(baseline), settings_of(candidate)]
    names = differing_settings(pair)
    if not names:
        return ""
    shown = ", ".join(f"{k} ({pair[0].get(k)} -> {pair[1].get(k)})" for k in names)
    return f"Settings that differ: {shown}."


def t_quantile_95(df: float) -> float:
    """One-sided 95 % Student t quantile t(0.95, df), for any df > 0 (fractional, or math.inf)."""
    return t_quantile(0.95, df)


def t_quantile(p: float, df: float) -> float:
    """The Student t quantile t(p, df) for 0 < p < 1 and df > 0 (fractional allowed; math.inf: normal).

    Bisection on the upper tail (see the module docstring). ``ValueError`` outside those ranges.
    """
    if not 0 < p < 1 or not df > 0 or math.isnan(df):
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p!r}, df={df!r}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if p == 0.5:
        return 0.0
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(p)
    target = 1 - p
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > target:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_upper_tail(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return (lo + hi) / 2


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0: I_x(df/2, 1/2) / 2, x = df / (df + t^2)."""
    if t == 0:
        return 0.5
    r = df + t * t
    return _regularized_beta(df / r, t * t / r, df / 2, 0.5) / 2


def _regularized_beta(x: float, one_minus_x: float, a: float, b: float) -> float:
    """I_x(a, b) for 0 < x < 1 (``one_minus_x`` passed exactly); the continued fraction where it converges."""
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(one_minus_x)
    )
    front = math.exp(log_front)
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1 - front * _beta_fraction(one_minus_x, b, a) / b


_TINY = 1e-300
_FRACTION_EPS = 1e-15
_FRACTION_MAX_TERMS = 100_000


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (A&S 26.5.8), by the modified Lentz method."""

    def guard(v: float) -> float:
        return v if abs(v) >= _TINY else _TINY

    c, d = 1.0, 1 / guard(1 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, _FRACTION_MAX_TERMS + 1):
        for aa in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 / guard(1 + aa * d)
            c = guard(1 + aa / c)
            h *= d * c
        if abs(d * c - 1) < _FRACTION_EPS:
            return h
    raise ArithmeticError(f"the incomplete beta fraction did not converge (x={x}, a={a}, b={b})")
