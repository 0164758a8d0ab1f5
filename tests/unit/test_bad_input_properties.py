"""Bad input, as properties (hypothesis): config values, YAML files, CLI arguments, MLproject -P parameters.

For every invalid input the command ends with exit 2, a message naming the field (or flag, or file), no
traceback, no model load and no result folder. The real backend is built and inspected (its checks run:
config, tokenizer, context) but its ``load()`` and ``generate()`` are refused and recorded, so "no model
was loaded" is observed, not assumed. Each example runs in a fresh folder that is listed afterwards: no
file may appear there (no result folder, no ``mlflow.db``).

The invalid values are derived from ``ExperimentConfig.model_fields`` (types, bounds, choices), so a new
field or a changed bound is covered without editing this file. Text fields are held to ``TEXT_RULES``,
literals of what MLflow's SQL stores and Linux refuse (not read from the code under test). Datasets that
are folders or FIFOs, tracking URIs no MLflow store handles, ``log``/``sync`` names and result folders
missing a file are cases of their own at the end. ``@example`` rows commented "was: ..." failed before
the fixes that came with these tests (see docs/reliability/bad-input.md).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from click.testing import Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llem_mlflow import backends
from llem_mlflow.cli import app as cli
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import ConfigError
from llem_mlflow.sweep.execute import NOT_SWEPT

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ExperimentConfig.model_fields
NAN, INF = float("nan"), float("inf")

FAST = settings(max_examples=200, deadline=None, database=None)
CLI = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------- what each field accepts, from the model


def _annotation(name: str) -> Any:
    """The field's type without ``| None``."""
    annotation = FIELDS[name].annotation
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
    return annotation


def nullable(name: str) -> bool:
    return type(None) in get_args(FIELDS[name].annotation) or name == "precision"  # precision: None = auto


def kind(name: str) -> str:
    """int, float, bool, str, literal or device_map."""
    if name == "device_map":
        return "device_map"
    annotation = _annotation(name)
    if get_origin(annotation) is Literal:
        return "literal"
    return {int: "int", float: "float", bool: "bool", str: "str"}[annotation]


def choices(name: str) -> tuple[str, ...]:
    return get_args(_annotation(name))


@dataclass(frozen=True)
class Bounds:
    low: float | None = None
    low_open: bool = False  # gt rather than ge
    high: float | None = None
    min_length: int = 0


def bounds(name: str) -> Bounds:
    b = Bounds()
    for m in FIELDS[name].metadata:
        if isinstance(m, annotated_types.Ge):
            b = Bounds(float(m.ge), False, b.high, b.min_length)
        elif isinstance(m, annotated_types.Gt):
            b = Bounds(float(m.gt), True, b.high, b.min_length)
        elif isinstance(m, annotated_types.Le):
            b = Bounds(b.low, b.low_open, float(m.le), b.min_length)
        elif isinstance(m, annotated_types.MinLen):
            b = Bounds(b.low, b.low_open, b.high, m.min_length)
    return b


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: Fields with a ``run`` flag taking a value (``mlflow`` is the flag ``--no-mlflow``).
FLAG_FIELDS = [name for name in FIELDS if name != "mlflow"]
#: What pydantic reads as a boolean (any case).
BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}
#: What each text field may hold, as literals (not read from the code under test): (unit, most), where the
#: unit is characters, or UTF-8 bytes for a path (each component at most NAME_MAX bytes). MLflow's SQL
#: stores hold run names of 250 and experiment names of 256 characters; Linux paths are PATH_MAX 4,096 bytes
#: with their NUL; output_dir leaves 2 x NAME_MAX for ``<experiment_id>/<file>``.
NAME_MAX = 255
TEXT_RULES: dict[str, tuple[str, int]] = {
    "model": ("bytes", 4095),
    "dataset": ("bytes", 4095),
    "output_dir": ("bytes", 4095 - 2 * NAME_MAX),
    "prompt_field": ("chars", 256),
    "tracking_uri": ("chars", 4096),
    "experiment_name": ("chars", 256),
    "run_name": ("chars", 250),
}
#: Text fields that refuse every control character (one-line names, URIs); the others refuse NUL only.
NO_CONTROLS = {"tracking_uri", "experiment_name", "run_name"}
#: Prompts x tokens the sweep/run files below ask for: tiny, so a wrongly accepted input fails fast.
SMALL = {"model": "gpt2", "n": 2, "batch_size": 1, "max_input_tokens": 4, "max_output_tokens": 2}

# ---------------------------------------------------------------- strategies: invalid values


def _text(min_size: int = 1, max_size: int = 20) -> st.SearchStrategy[str]:
    """Any text a command line can carry: no NUL, no lone surrogates; unicode included."""
    chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    return st.text(chars, min_size=min_size, max_size=max_size)


LETTERS = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Lo")), min_size=1, max_size=12)
NON_FINITE = st.sampled_from([NAN, INF, -INF])
CONTAINERS = st.one_of(
    st.lists(st.integers(), max_size=3), st.dictionaries(LETTERS, st.integers(), max_size=2)
)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
FRACTIONAL = st.tuples(st.integers(-(10**9), 10**9), st.floats(0.01, 0.99)).map(sum)  # 2.5, -7.01, ...


def _below(b: Bounds, integer: bool) -> st.SearchStrategy[Any]:
    assert b.low is not None
    if integer:
        return st.integers(max_value=math.ceil(b.low) - 1)
    return st.floats(max_value=b.low, exclude_max=not b.low_open, allow_nan=False, allow_infinity=False)


def _above(b: Bounds, integer: bool) -> st.SearchStrategy[Any]:
    assert b.high is not None
    first = math.floor(b.high) + 1
    ints = st.integers(min_value=first)
    if integer:  # just above the bound, or huge
        return st.one_of(ints, st.integers(min_value=max(first, 10**18), max_value=10**40))
    floats = st.floats(min_value=b.high, exclude_min=True, allow_nan=False, allow_infinity=False)
    return st.one_of(floats, ints)


def bad_string(name: str, nul: bool = True) -> st.SearchStrategy[str]:
    """Strings ``name`` must refuse by ``TEXT_RULES``: too long, a component too long, NUL (``nul``: a
    command line cannot carry one), a control character in a name, text that is not UTF-8."""
    unit, most = TEXT_RULES[name]
    end = ".jsonl" if name == "dataset" else ""
    over = st.integers(most + 1, most + 64)
    options = [
        over.map(lambda k: "a" * (k - len(end)) + end),  # one long component, or too many characters
        st.just("\udcff" + end),  # a byte of argv that is not UTF-8
    ]
    if unit == "bytes":  # short components, too many bytes in all; or one component of NAME_MAX + 1 bytes
        options.append(over.map(lambda k: "/".join(["d" * 99] * (k // 100 + 1)) + end))
        options.append(st.integers(NAME_MAX // 2 + 1, NAME_MAX).map(lambda k: "x/" + "é" * k + end))
    if nul:
        options.append(_text(0, 5).map(lambda s: s + "\x00" + end))
    if name in NO_CONTROLS:
        controls = st.sampled_from([chr(c) for c in [*range(1, 32), 127]])
        options.append(st.tuples(_text(1, 5), controls).map(lambda t: t[0] + t[1] + end))
    return st.one_of(options)


def bad_value(name: str) -> st.SearchStrategy[Any]:
    """Python values (as YAML or a mapping holds them) that ``name`` must refuse."""
    k, b = kind(name), bounds(name)
    # a mapping is a device_map's own type ({} and {module: gpu} are checked by the backend, not here)
    options: list[st.SearchStrategy[Any]] = [
        st.lists(st.integers(), max_size=3) if k == "device_map" else CONTAINERS
    ]
    if not nullable(name):
        options.append(st.none())
    if k in ("int", "float"):
        integer = k == "int"
        options += [NON_FINITE, st.booleans(), LETTERS]
        if b.low is not None:
            options.append(_below(b, integer))
        if b.high is not None:
            options.append(_above(b, integer))
        if integer:
            options.append(FRACTIONAL)
    elif k == "bool":
        options += [
            st.integers().filter(lambda i: i not in (0, 1)),
            FINITE.filter(lambda x: x not in (0.0, 1.0)),
            _text().filter(lambda s: s.strip().lower() not in BOOL_WORDS),
        ]
    elif k == "literal":
        allowed = set(choices(name))
        options += [
            _text().filter(lambda s: s not in allowed),
            st.sampled_from(sorted(allowed)).map(str.upper).filter(lambda s: s not in allowed),
            st.integers(),
            FINITE,
        ]
    elif k == "device_map":
        allowed = {*choices(name), "", "none", "null"}
        bad_gpu = st.one_of(st.none(), FRACTIONAL, CONTAINERS)
        bad_map = st.dictionaries(LETTERS, bad_gpu, min_size=1, max_size=2)
        options += [
            _text().filter(lambda s: s not in allowed and not s.strip().startswith("{")),
            _text(max_size=10).map(lambda s: "{" + s).filter(_not_a_json_object),
            bad_map,
            bad_map.map(lambda m: yaml.safe_dump(m, default_flow_style=True).strip()).filter(
                lambda s: s.startswith("{")
            ),
            st.integers(),
        ]
    else:  # str
        options += [st.integers(), FINITE, st.booleans()]
        if b.min_length:
            options.append(st.just(""))
        if name == "dataset":
            options.append(_text().filter(lambda s: s != "synthetic" and not s.endswith(".jsonl")))
        if name in TEXT_RULES:
            options.append(bad_string(name))
    return st.one_of(options)


def _not_a_json_object(text: str) -> bool:
    import json

    try:
        return not isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return True


def _number_text(integer: bool, b: Bounds) -> st.SearchStrategy[str]:
    options = [
        LETTERS,
        st.sampled_from(["nan", "inf", "-inf", "Infinity", "1e400", "-1e400"]),
    ]
    if integer:
        options.append(FRACTIONAL.map(repr))
    if b.low is not None:
        options.append(_below(b, integer).map(repr))
    if b.high is not None:
        options.append(_above(b, integer).map(repr))
    return st.one_of(options)


def bad_text(name: str) -> st.SearchStrategy[str] | None:
    """Non-empty strings (as a flag or ``-P`` value gives them) that ``name`` must refuse; None: no such."""
    k, b = kind(name), bounds(name)
    if k in ("int", "float"):
        return _number_text(k == "int", b)
    if k == "bool":
        return _text().filter(lambda s: s.strip().lower() not in BOOL_WORDS)
    if k == "literal":
        allowed = set(choices(name))
        return _text().filter(lambda s: s not in allowed)
    if k == "device_map":
        allowed = {*choices(name), "", "none", "null"}
        return st.one_of(
            _text().filter(lambda s: s not in allowed and not s.strip().startswith("{")),
            _text(max_size=10).map(lambda s: "{" + s).filter(_not_a_json_object),
        )
    if name == "dataset":
        return st.one_of(
            _text().filter(lambda s: s != "synthetic" and not s.endswith(".jsonl")),
            bad_string(name, nul=False),
        )
    if name in TEXT_RULES:
        return bad_string(name, nul=False)
    return None


TEXT_FIELDS = [name for name in FLAG_FIELDS if bad_text(name) is not None]


@st.composite
def field_and_bad_value(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(list(FIELDS)))
    return name, draw(bad_value(name))


@st.composite
def field_and_bad_text(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(TEXT_FIELDS))
    strategy = bad_text(name)
    assert strategy is not None
    return name, draw(strategy)


def _known_option(token: str) -> bool:
    name = token.lstrip("-").replace("_", "-")
    return name in {n.replace("_", "-") for n in FIELDS} | {"config", "no-mlflow", "gpus", "help", "h"}


def _yaml_keeps(key: str) -> bool:
    """YAML writes and reads the key back unchanged (line-break characters in a key do not survive)."""
    return yaml.safe_load(yaml.safe_dump({key: 1}, allow_unicode=True)) == {key: 1}


UNKNOWN_KEY = _text().filter(lambda s: s not in FIELDS and s != "sweep" and _yaml_keeps(s))
#: ``-P key=value`` keys a shell can pass that name no option (``help`` would print the help, exit 0).
UNKNOWN_PARAM = st.text(
    st.characters(whitelist_categories=("L", "N", "P", "S"), blacklist_characters="="),
    min_size=1,
    max_size=20,
).filter(lambda k: k not in FIELDS and not _known_option("--" + k))
UNKNOWN_FLAG = (
    st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20)
    .map(lambda s: "--" + s.lstrip("-_"))
    .filter(lambda s: len(s) > 2 and not _known_option(s))
)

# ---------------------------------------------------------------- running the CLI with loading refused


class ModelLoaded(AssertionError):
    """A model load (or generate) was reached for an input that should have been refused first."""


@dataclass
class Loads:
    """What the guarded backends saw: how many were built, and every refused load/generate."""

    built: int = 0
    refused: list[str] = field(default_factory=list)


class NoLoadBackend:
    """The real backend for everything before loading (inspect, tokenize); ``load``/``generate`` refused."""

    def __init__(self, inner: Any, loads: Loads) -> None:
        self.inner = inner
        self.loads = loads

    def inspect(self) -> Any:
        return self.inner.inspect()

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        return self.inner.tokenize(prompts, max_input_tokens)  # type: ignore[no-any-return]

    def tokenizer_name(self) -> str:
        return self.inner.tokenizer_name()  # type: ignore[no-any-return]

    def versions(self) -> dict[str, str | None]:
        return self.inner.versions()  # type: ignore[no-any-return]

    def synchronize(self) -> None:
        self.inner.synchronize()

    def warmup_groups(self, cfg: Any, groups: list[list[list[int]]]) -> list[list[list[int]]]:
        return self.inner.warmup_groups(cfg, groups)  # type: ignore[no-any-return]

    def load(self) -> Any:
        self.loads.refused.append("load")
        raise ModelLoaded("the model was about to load")

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> Any:
        self.loads.refused.append("generate")
        raise ModelLoaded("generate() was called")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Loads:
    """Every backend ``run`` and ``sweep`` build is the real one with loading refused."""
    record = Loads()
    real = backends.create_backend

    def guarded(cfg: ExperimentConfig) -> NoLoadBackend:
        record.built += 1
        return NoLoadBackend(real(cfg), record)

    monkeypatch.setattr(backends, "create_backend", guarded)
    return record


@dataclass(frozen=True)
class Ran:
    result: Result
    new_files: list[str]  # files that appeared in the example's folder (its inputs excluded)
    output_entries: list[str]  # what the output folder holds (it may exist, empty: checked writable)

    @property
    def output(self) -> str:
        return self.result.output


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    """A fresh folder, the working directory while inside (contextlib.chdir needs Python 3.11)."""
    before = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(before)


def invoke(
    loads: Loads,
    args: list[str],
    files: Mapping[str, str | bytes] | None = None,
    output_dir: str = "results",
    env: Mapping[str, str] | None = None,
    make: Callable[[Path], None] | None = None,
) -> Ran:
    """``llem-mlflow *args`` in a fresh folder holding ``files`` (and what ``make`` makes there); MLflow's
    store is ``mlflow.db`` there unless ``env`` says otherwise."""
    loads.built, loads.refused[:] = 0, []
    with _folder() as d:
        for name, content in (files or {}).items():
            path = d / name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        if make is not None:
            make(d)
        environ = {
            "COLUMNS": "400",
            "TERMINAL_WIDTH": "400",
            "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db",
        }
        result = CliRunner().invoke(cli.app, args, env={**environ, **(env or {})})
        inputs = {str(d / name) for name in files or {}}
        new = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and str(p) not in inputs)
        out = d / output_dir
        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    return Ran(result, new, entries)


def named(name: str, text: str) -> bool:
    """``name`` (field, flag, key or file; ``_`` or ``-``, leading dashes or not) is a word of ``text``."""
    bare = name.lstrip("-")
    spellings = {name, bare, bare.replace("_", "-"), bare.replace("-", "_"), repr(name)[1:-1]} - {""}
    return any(re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text) for s in spellings)


def assert_refused(ran: Ran, loads: Loads, *names: str) -> None:
    """Exit 2, one of ``names`` (field, flag or file) named, no traceback, nothing loaded or written."""
    out = ran.output
    assert not loads.refused, f"a model load was reached: {loads.refused}\n{out}"
    assert isinstance(ran.result.exception, SystemExit), (
        f"{type(ran.result.exception).__name__}: {ran.result.exception}\n{out}"
    )
    assert ran.result.exit_code == 2, out
    assert "Traceback" not in out
    assert any(named(n, out) for n in names), f"none of {names} named in:\n{out}"
    assert ran.new_files == [], f"files written for a refused input: {ran.new_files}"
    assert ran.output_entries == [], f"result folder(s) created: {ran.output_entries}"


def yaml_text(data: Mapping[Any, Any]) -> str:
    return yaml.safe_dump(dict(data), allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------- config values (no CLI: fast, many examples)


@FAST
@given(case=field_and_bad_value())
@example(case=("n", True))  # was: accepted as n=1
@example(case=("batch_size", False))
@example(case=("cooldown_s", INF))  # was: accepted; time.sleep(inf) raised after the first cycle
@example(case=("carbon_intensity_g_per_kwh", INF))  # was: accepted
@example(case=("warmup_settle_cv_pct", INF))  # was: accepted
@example(case=("cooldown_s", 1e10))  # was: accepted; time.sleep(1e10) raised OverflowError after loading
@example(case=("baseline_s", 1e12))  # was: accepted
@example(case=("seed", 2**64))  # was: accepted; torch.manual_seed overflows at load (exit 1)
@example(case=("n", 10**12))  # was: accepted; building 10^12 synthetic prompts never ends
@example(case=("max_input_tokens", 10**9))  # was: accepted
@example(case=("device_map", '{"a": ' + "[" * 2000 + "}"))  # was: RecursionError traceback
@example(case=("batch_size", 10**7))  # was: accepted
@example(case=("warmup_batches", 10**9))  # was: accepted; 10^9 warm-up batches never end
@example(case=("sampling_interval_s", 1e-300))  # was: accepted; the sampler spins a core
@example(case=("pue", 1e300))  # was: accepted
@example(case=("run_name", "r" * 251))  # was: accepted; MLflow's SQL stores hold 250 characters
@example(case=("experiment_name", "a\nb"))  # was: accepted
@example(case=("output_dir", "o" * 256))  # was: accepted by the config (refused later, without the limit)
def test_invalid_value_is_a_config_error_naming_the_field(case: tuple[str, Any]) -> None:
    name, value = case
    with pytest.raises(ConfigError) as info:
        load_config({name: value})
    message = str(info.value)
    assert message.startswith(f"invalid config: {name}"), message
    assert "\n" not in message


@FAST
@given(key=UNKNOWN_KEY, value=st.one_of(st.integers(), _text(0), st.none()))
def test_unknown_key_is_a_config_error_naming_it(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({key: value})
    shown = key if key.isprintable() else repr(key)  # a control character is shown escaped: one line
    message = str(info.value)
    # a key the credential scrubber would read as a header (`Authorization: x`) is named quoted instead
    assert f"{shown}: unknown field" in message or f"unknown field {shown!r}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("key", ["AUTHORIZATION", "proxy_authorization", "Authorization"])
def test_an_unknown_key_named_like_a_credential_header_is_still_named(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({key: "x"})
    assert f"unknown field {key!r}" in str(info.value) and "***" not in str(info.value)


@FAST
@given(text=st.one_of(_text(0, 200), st.binary(max_size=200)))
@example(text=b"\x80")  # was: UnicodeDecodeError traceback
@example(text="a: " + "[" * 2000 + "]" * 2000)  # was: RecursionError traceback
@example(text="\t")  # was: a YAML error message over several lines
@example(text="model: [gpt2\n n: 3")  # was: a YAML error message over several lines
@example(text="cooldown_s: .inf\n")  # was: accepted
@example(text="n: yes\n")  # was: accepted as n=1
def test_any_yaml_file_loads_or_is_a_config_error(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            assert "\n" not in str(exc), str(exc)
            return
    assert isinstance(cfg, ExperimentConfig)


# ---------------------------------------------------------------- the CLI: YAML files, flags, MLproject -P


@CLI
@given(case=field_and_bad_value(), other=st.sampled_from([{}, SMALL]))
@example(case=("n", True), other={})  # was: ran with n=1
@example(case=("cooldown_s", False), other={})  # was: ran with cooldown_s=0
@example(case=("cooldown_s", INF), other={})  # was: loaded the model
@example(case=("seed", 2**64), other={})  # was: loaded the model, then failed (exit 1)
@example(case=("device_map", {}), other={})  # refused by the backend as it is made, before any check
@example(case=("output_dir", "out\x00put"), other={})  # was: ValueError traceback, exit 1
def test_run_yaml_with_an_invalid_value(loads: Loads, case: tuple[str, Any], other: dict[str, Any]) -> None:
    name, value = case
    data = {**{k: v for k, v in other.items() if k != name}, name: value}
    ran = invoke(loads, ["run", "c.yaml"], {"c.yaml": yaml_text(data)})
    assert_refused(ran, loads, name)


@CLI
@given(key=UNKNOWN_KEY)
def test_run_yaml_with_an_unknown_key(loads: Loads, key: str) -> None:
    ran = invoke(loads, ["run", "c.yaml"], {"c.yaml": yaml_text({**SMALL, key: 1})})
    assert_refused(ran, loads, key)


@CLI
@given(text=st.one_of(_text(1, 100), st.binary(min_size=1, max_size=100)))
@example(text=b"\x80")  # was: UnicodeDecodeError, exit 1
@example(text="0")  # was: read as {} and ran the defaults (`yaml.safe_load(...) or {}`)
@example(text="a: " + "[" * 2000 + "]" * 2000)  # was: RecursionError, exit 1
@example(text="- 1\n- 2\n")
@example(text="just text")
def test_run_yaml_that_is_not_a_config_mapping(loads: Loads, text: str | bytes) -> None:
    raw = text.encode() if isinstance(text, str) else text
    try:
        data = yaml.safe_load(raw.decode())
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        data = None  # unreadable: the message names the file
    else:
        if isinstance(data, dict) or data is None:
            return  # a mapping (or empty): covered by the value and key properties
    ran = invoke(loads, ["run", "c.yaml"], {"c.yaml": raw})
    assert_refused(ran, loads, "c.yaml")


def _flag_args(name: str, value: str, equals: bool) -> list[str]:
    """``--flag value``, or ``--flag=value`` (always for a value starting with '-')."""
    return [f"{flag(name)}={value}"] if equals or value.startswith("-") else [flag(name), value]


@CLI
@given(case=field_and_bad_text(), equals=st.booleans(), underscores=st.booleans())
@example(case=("cooldown_s", "1e400"), equals=False, underscores=False)  # was: read as inf, loaded
@example(case=("cooldown_s", "inf"), equals=False, underscores=False)  # was: loaded the model
@example(case=("seed", str(2**64)), equals=False, underscores=False)  # was: loaded, then failed (exit 1)
def test_run_flag_with_an_invalid_value(
    loads: Loads, case: tuple[str, str], equals: bool, underscores: bool
) -> None:
    name, value = case
    args = _flag_args(name, value, equals)
    if underscores:  # `mlflow run -P batch_size=0` spelling
        args[0] = args[0].replace(flag(name), "--" + name, 1)
    ran = invoke(loads, ["run", "--model", "gpt2", *args])
    assert_refused(ran, loads, name)


@st.composite
def bad_command_line(draw: st.DrawFn, positional: list[str]) -> tuple[list[str], list[str]]:
    """A ``run``/``sweep`` argument list with at least one bad item, and the names of the bad items.

    Items: flags with bad values, unknown flags, an extra positional argument; valid flags mixed in;
    a flag left without its value can only come last. Every field appears at most once.
    """
    names = draw(st.lists(st.sampled_from(TEXT_FIELDS), min_size=0, max_size=3, unique=True))
    items: list[tuple[list[str], str | None]] = []
    for name in names:
        strategy = bad_text(name)
        assert strategy is not None
        items.append((_flag_args(name, draw(strategy), draw(st.booleans())), name))
    for unknown in draw(st.lists(UNKNOWN_FLAG, max_size=2, unique=True)):
        items.append(([unknown, *draw(st.sampled_from([[], ["1"]]))], unknown))
    if draw(st.booleans()):
        extra = draw(st.text("abcxyz.", min_size=1, max_size=8))
        items.append(([extra], extra))
    valid = [("--no-mlflow",), ("--weights", "random"), ("--output-dir", "results")]
    items += [(list(v), None) for v in draw(st.lists(st.sampled_from(valid), max_size=2, unique=True))]
    items = draw(st.permutations(items))
    if not any(bad for _, bad in items) or draw(st.booleans()):
        dangling = draw(st.sampled_from([n for n in FLAG_FIELDS if n not in names]))
        items.append(([flag(dangling)], flag(dangling)))  # `--n` with nothing after it
    args = [*positional, *(token for tokens, _ in items for token in tokens)]
    return args, [bad for _, bad in items if bad is not None]


@CLI
@given(command=bad_command_line(positional=[]))
def test_run_with_random_bad_arguments(loads: Loads, command: tuple[list[str], list[str]]) -> None:
    args, bad = command
    ran = invoke(loads, ["run", *args])
    assert_refused(ran, loads, *bad)


@functools.cache
def _project() -> Any:
    from mlflow.projects._project_spec import load_project

    return load_project(str(ROOT))


def _mlproject_args(entry_point: str, params: dict[str, str]) -> list[str]:
    """The arguments `mlflow run . -e <entry_point> -P k=v ...` gives llem-mlflow (MLflow's own code)."""
    command = _project().get_entry_point(entry_point).compute_command(params, None)
    tokens = shlex.split(command)
    assert tokens[:2] == ["llem-mlflow", "sweep" if entry_point == "sweep" else "run"]
    return tokens[1:]


@CLI
@given(
    case=st.one_of(field_and_bad_text(), st.tuples(UNKNOWN_PARAM, _text(0))),
    config=st.booleans(),
)
@example(case=("cooldown_s", "1e400"), config=False)  # was: read as inf, loaded the model
def test_mlproject_parameter_with_an_invalid_value(loads: Loads, case: tuple[str, str], config: bool) -> None:
    name, value = case
    params = {"config": "c.yaml"} if config else {}
    params[name] = value
    args = _mlproject_args("main", params)
    ran = invoke(loads, args, {"c.yaml": yaml_text(SMALL)})
    assert_refused(ran, loads, name)


# ---------------------------------------------------------------- checks before the model loads


@st.composite
def preflight_case(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str | bytes], str]:
    """A valid config that the checks before loading must refuse: (config, files, field named)."""
    which = draw(st.sampled_from(["context", "size", "output_dir", "dataset_missing", "dataset_bad"]))
    if which == "context":  # gpt2: 1024 positions
        inp = draw(st.integers(1, 2**20))
        out = draw(st.integers(max(1, 1025 - inp), 2**20))
        return {"max_input_tokens": inp, "max_output_tokens": out}, {}, "max_output_tokens"
    if which == "size":  # within the context, but more synthetic prompt tokens than the checks allow
        inp = draw(st.integers(500, 1000))
        n = draw(st.integers(2**25 // inp + 1, 1_000_000))
        return {"n": n, "max_input_tokens": inp, "max_output_tokens": 1}, {}, "n"
    if which == "output_dir":
        kind_ = draw(st.sampled_from(["file", "under_file"]))  # a NUL is the config's (bad_string)
        bad = {"file": "taken", "under_file": "taken/results"}[kind_]
        return {"output_dir": bad}, {"taken": "a file"}, "output_dir"
    if which == "dataset_missing":
        return {"dataset": draw(_text(1, 10)).replace("/", "_") + ".jsonl"}, {}, "dataset"
    lines = ['{"prompt": ""}', '{"text": "hi"}', "not json", '["a"]', '{"prompt": 3}', '{"prompt": "a"}']
    line = draw(st.sampled_from(lines))  # the last is valid, but one prompt is fewer than n (32)
    return {"dataset": "p.jsonl"}, {"p.jsonl": line + "\n"}, "dataset"


@CLI
@given(case=preflight_case())
@example(case=({"max_input_tokens": 2**20}, {}, "max_output_tokens"))  # was: 32 x 2^20 ids built first
@example(case=({"n": 1_000_000, "max_input_tokens": 1000, "max_output_tokens": 1}, {}, "n"))  # was: 10^9
@example(case=({"dataset": "p.jsonl"}, {"p.jsonl": b'{"prompt": "\xff"}\n'}, "dataset"))  # was: traceback
@example(case=({"dataset": "p.jsonl"}, {"p.jsonl": '{"prompt": ' + "[" * 2000}, "dataset"))  # was: traceback
def test_checks_before_loading_refuse_what_cannot_run(
    loads: Loads, case: tuple[dict[str, Any], dict[str, str | bytes], str]
) -> None:
    data, files, name = case
    ran = invoke(loads, ["run", "c.yaml"], {**files, "c.yaml": yaml_text({"model": "gpt2", **data})})
    assert loads.built == 1, "the checks run on the real backend"
    assert_refused(ran, loads, name)


# ---------------------------------------------------------------- sweep


SWEEP_BASE = {**SMALL, "mlflow": False}


@st.composite
def bad_sweep_file(draw: st.DrawFn) -> tuple[str, str]:
    """(sweep file text, what the message must name)."""
    which = draw(st.sampled_from(["base_value", "unknown_base", "section", "swept"]))
    if which == "base_value":
        name, value = draw(field_and_bad_value().filter(lambda c: c[0] != "batch_size"))
        return yaml_text({**SWEEP_BASE, name: value, "sweep": {"batch_size": [1, 2]}}), name
    if which == "unknown_base":
        key = draw(UNKNOWN_KEY)
        return yaml_text({**SWEEP_BASE, key: 1, "sweep": {"batch_size": [1, 2]}}), key
    if which == "section":
        section = draw(
            st.one_of(
                st.just({}),
                st.just([]),
                st.none(),
                st.integers(),
                _text(),
                st.dictionaries(
                    st.sampled_from(["batch_size", "n"]), st.one_of(st.integers(), st.just([])), min_size=1
                ),
                st.lists(st.one_of(st.integers(), st.just({})), min_size=1, max_size=2),
            )
        )
        return yaml_text({**SWEEP_BASE, "sweep": section}), "sweep"
    # a field that is unknown or says where results go
    name = draw(st.one_of(UNKNOWN_KEY, st.sampled_from(NOT_SWEPT)))
    return yaml_text({**SWEEP_BASE, "sweep": {name: [1, 2]}}), name


@CLI
@given(case=bad_sweep_file())
@example(case=(yaml_text({**SWEEP_BASE, "n": True, "sweep": {"batch_size": [1]}}), "n"))  # was: n=1
def test_sweep_file_that_cannot_run(loads: Loads, case: tuple[str, str]) -> None:
    text, name = case
    ran = invoke(loads, ["sweep", "s.yaml"], {"s.yaml": text})
    assert_refused(ran, loads, name)


@settings(CLI, max_examples=25)
@given(name=st.sampled_from([n for n in FLAG_FIELDS if n not in NOT_SWEPT]), data=st.data())
@example(name="batch_size", data=None)
def test_sweep_whose_every_point_is_invalid(loads: Loads, name: str, data: st.DataObject | None) -> None:
    """Invalid points are listed and skipped, never fatal (test_cli_sweep pins exit 0 for this case too):
    nothing loads, each point's row names the field, only the sweep summary is written."""
    values = data.draw(st.lists(bad_value(name), min_size=1, max_size=3)) if data else [0, -1]
    ran = invoke(loads, ["sweep", "s.yaml"], {"s.yaml": yaml_text({**SWEEP_BASE, "sweep": {name: values}})})
    assert not loads.refused and ran.result.exit_code == 0, ran.output
    rows = [line for line in ran.output.splitlines() if line.startswith("| `")]
    assert len(rows) == len(values) and all(f"invalid: invalid config: {name}" in row for row in rows), (
        ran.output
    )
    assert all(f.startswith("results/sweep-") for f in ran.new_files), ran.new_files


@CLI
@given(command=bad_command_line(positional=["s.yaml"]), gpus=st.one_of(st.none(), LETTERS))
def test_sweep_with_random_bad_arguments(
    loads: Loads, command: tuple[list[str], list[str]], gpus: str | None
) -> None:
    args, bad = command
    extra = ["--gpus", gpus] if gpus is not None else []
    sweep = yaml_text({**SMALL, "sweep": {"precision": ["fp32", "bf16"]}})
    ran = invoke(loads, ["sweep", *extra, *args], {"s.yaml": sweep})
    assert_refused(ran, loads, *bad, *(["--gpus"] if gpus is not None else []))


@CLI
@given(case=st.one_of(field_and_bad_text(), st.tuples(UNKNOWN_PARAM, _text(0))))
def test_mlproject_sweep_parameter_with_an_invalid_value(loads: Loads, case: tuple[str, str]) -> None:
    name, value = case
    args = _mlproject_args("sweep", {"config": "s.yaml", name: value})
    ran = invoke(loads, args, {"s.yaml": yaml_text({**SMALL, "sweep": {"weights": ["random", "auto"]}})})
    assert_refused(ran, loads, name)


# ---------------------------------------------------------------- the real script: no traceback on stderr

SCRIPT = Path(sys.executable).with_name("llem-mlflow")


@pytest.mark.parametrize(
    ("files", "args", "named"),
    [
        ({"c.yaml": b"model: \xff\xfe\n"}, ["c.yaml"], "c.yaml"),
        ({"c.yaml": "a: " + "[" * 2000 + "]" * 2000}, ["c.yaml"], "c.yaml"),
        ({"c.yaml": "n: yes\n"}, ["c.yaml"], "n"),
        ({}, ["--cooldown-s", "1e400"], "cooldown_s"),
        ({}, ["--device_map", '{"a": ' + "[" * 2000 + "}"], "device_map"),
        ({}, ["--run-name", "r" * 300], "run_name"),  # was: measured, then logged with a 300-character name
        ({}, ["--tracking-uri", "fooscheme://x"], "tracking_uri"),  # was: measured, then spooled
    ],
    ids=["not-utf8", "deep-yaml", "bool-as-int", "inf", "deep-json", "long-run-name", "unknown-scheme"],
)
def test_script_exits_2_without_traceback(
    tmp_path: Path, files: dict[str, str | bytes], args: list[str], named: str
) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llem_mlflow"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [*command, "run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "loading" not in proc.stderr  # no model load stage began
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("[llem] checking")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)


# ---------------------------------------------------------------- names, files and stores (issue 17, point 7)


def assert_one_line(output: str) -> None:
    """One ``error:`` line, after at most the checks' own stage line; no model load stage began."""
    lines = [line for line in output.strip().splitlines() if not line.startswith("[llem] checking")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "loading" not in output, output


def _names_a_limit(name: str, text: str) -> bool:
    """The message says which limit the value broke (its size, NAME_MAX, NUL, controls or UTF-8)."""
    most = TEXT_RULES[name][1]
    return any(w in text for w in (f"{most:,}", str(NAME_MAX), "NUL", "control character", "UTF-8"))


@CLI
@given(name=st.sampled_from(sorted(TEXT_RULES)), data=st.data())
@example(name="output_dir", data=None)  # was: "cannot write results ... (File name too long)", no limit named
def test_run_with_a_name_mlflow_or_the_filesystem_would_reject(
    loads: Loads, name: str, data: st.DataObject | None
) -> None:
    """Refused before the model loads, one line naming the field and the limit; was: accepted, and MLflow or
    the filesystem refused it after the measurement (or, for a path, without saying which limit)."""
    value = data.draw(bad_string(name, nul=False)) if data else "o" * (NAME_MAX + 1)
    ran = invoke(loads, ["run", "--model", "gpt2", f"{flag(name)}={value}"])
    assert_refused(ran, loads, name)
    assert _names_a_limit(name, ran.output), ran.output
    assert_one_line(ran.output)


def _special(kind_: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        os.mkfifo(folder / "p.jsonl") if kind_ == "fifo" else (folder / "p.jsonl").mkdir()

    return make


@pytest.mark.parametrize(
    ("kind_", "says"),
    [("fifo", "is a FIFO, not a regular file"), ("dir", "is a directory, not a regular file")],
)
def test_a_dataset_that_is_not_a_regular_file_says_what_it_is(loads: Loads, kind_: str, says: str) -> None:
    """Was: "dataset: file not found" for both (and a FIFO is never opened: that would block)."""
    ran = invoke(loads, ["run", "--model", "gpt2", "--dataset", "p.jsonl"], make=_special(kind_))
    assert_refused(ran, loads, "dataset")
    assert says in ran.output and "not found" not in ran.output, ran.output


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--tracking-uri", "fooscheme://x"], {}, "tracking_uri"),
        ([], {"MLFLOW_TRACKING_URI": "fooscheme://x"}, "MLFLOW_TRACKING_URI"),
        ([], {"MLFLOW_EXPERIMENT_NAME": "e" * 300}, "MLFLOW_EXPERIMENT_NAME"),
    ],
    ids=["flag", "env", "env-experiment-name"],
)
def test_a_store_or_experiment_mlflow_cannot_take_is_refused_before_loading(
    loads: Loads, args: list[str], env: dict[str, str], named: str
) -> None:
    """Was: the model loaded and measured; logging failed after, and the result was spooled."""
    ran = invoke(loads, ["run", "--model", "gpt2", *args], env=env)
    assert_refused(ran, loads, named)
    assert_one_line(ran.output)


@pytest.mark.parametrize("option", ["--tracking-uri", "--experiment-name", "--run-name"])
def test_log_refuses_a_name_mlflow_cannot_take(tmp_path: Path, option: str) -> None:
    """``log``'s names are held to the config's limits (exit 2, one line), before anything is read; was:
    logged with the 257-character experiment and 251-character run name (sqlite takes them), exit 1 for
    the URI (a failed connection)."""
    value = {"--tracking-uri": "http://h/\n", "--experiment-name": "e" * 257, "--run-name": "r" * 251}[option]
    shutil.copytree(FIXTURE, tmp_path / "r")  # a loggable folder: only the name is wrong
    result = CliRunner().invoke(cli.app, ["log", str(tmp_path / "r"), option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output and len(result.output.strip().splitlines()) == 1, result.output


FIXTURE = ROOT / "tests" / "fixtures" / "h200_gpt2"


@pytest.mark.parametrize("gone", ["timeseries.parquet", "result.json"])
def test_log_of_a_folder_missing_a_file_says_missing(tmp_path: Path, gone: str) -> None:
    """Was: "cannot read power trace <path>: <path>" (pyarrow's words); "cannot read result file ...:
    [Errno 2] No such file or directory"."""
    folder = tmp_path / "r"
    shutil.copytree(FIXTURE, folder)
    (folder / gone).unlink()
    result = CliRunner().invoke(cli.app, ["log", str(folder)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and gone in line and "is missing" in line, line


def test_sync_logs_an_entry_into_the_experiment_named_on_the_command_line(tmp_path: Path) -> None:
    """A result spooled for an experiment MLflow refuses (here: deleted) is logged with ``--experiment-name``;
    was: no such option, so the entry could never be logged."""
    from mlflow.tracking import MlflowClient

    from llem_mlflow.run.execute import execute
    from tests.fakes import FakeBackend

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    cfg = load_config(
        {**SMALL, "output_dir": str(tmp_path / "out"), "tracking_uri": uri, "experiment_name": "gone"},
        baseline_s=0.0,
    )
    outcome = execute(cfg, backend=FakeBackend(), store_probe=lambda c: None)
    assert outcome.run_id is None and outcome.tracking_error is not None  # refused: spooled
    first = CliRunner().invoke(cli.app, ["sync"])
    assert first.exit_code == 1 and "failed" in first.output, first.output
    second = CliRunner().invoke(cli.app, ["sync", "--experiment-name", "kept"])
    assert second.exit_code == 0 and " logged run " in second.output, second.output
    kept = client.get_experiment_by_name("kept")
    assert kept is not None and len(client.search_runs([kept.experiment_id])) == 1


def test_a_default_run_name_from_a_long_model_folder_fits_mlflow(sample_result: tuple[Any, Any]) -> None:
    """Was: a model folder name of 255 bytes made a run name over 250 characters, which a PostgreSQL or
    MySQL store refuses (runs.name is VARCHAR(250)) when logging, after the measurement."""
    from llem_mlflow.tracking import client as tracking

    result, _ = sample_result
    short = tracking.default_run_name(result)
    name = tracking.default_run_name(result.model_copy(update={"model": "/models/" + "m" * NAME_MAX}))
    assert len(name) == 250 and name.startswith("mmm") and name.endswith(short[short.index("-bs") :])


def test_a_sweep_to_a_store_no_mlflow_handles_is_refused_before_any_point(loads: Loads) -> None:
    """Was: exit 1 with MLflow's "Model registry functionality is unavailable; got unsupported URI" text."""
    sweep = yaml_text({**SMALL, "sweep": {"batch_size": [1, 2]}})
    ran = invoke(loads, ["sweep", "s.yaml", "--tracking-uri", "fooscheme://x"], {"s.yaml": sweep})
    assert_refused(ran, loads, "tracking_uri")
    assert "scheme 'fooscheme'" in ran.output, ran.output
