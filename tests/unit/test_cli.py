"""The real `llem-mlflow` CLI: help text, flags, '' as unset, progress display, `config` and the summary.

In-process through typer's CliRunner (the run itself is replaced where a model would load), and
through subprocesses of the installed `llem-mlflow` script where the process matters.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import build_result
from rich.console import Console
from typer.testing import CliRunner, Result

from llem_mlflow import __version__
from llem_mlflow.backends.runtime import cuda_available
from llem_mlflow.cli import run_cmd
from llem_mlflow.cli import summary as cli
from llem_mlflow.cli.app import app
from llem_mlflow.cli.console import ConsoleProgress
from llem_mlflow.config import ExperimentConfig

WIDE = {"COLUMNS": "300", "TERMINAL_WIDTH": "300"}  # one help row per option (limits included), unwrapped
HEAVY = ("torch", "transformers", "mlflow", "pynvml", "pyarrow")
SCRIPT = Path(sys.executable).with_name("llem-mlflow")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CONFIG_OPTIONS = [name for name in ExperimentConfig.model_fields if name != "mlflow"]


def invoke(*args: str, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), env={**WIDE, **env})


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def help_rows(text: str) -> dict[str, str]:
    """Each option's row of a rendered help panel, keyed by its long name."""
    rows = {}
    for line in text.splitlines():
        words = line.strip("│ ").split()
        if words and words[0].startswith("--"):
            rows[words[0]] = line
    return rows


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ExperimentConfig]:
    """The configs `run` would execute (nothing is loaded)."""
    configs: list[ExperimentConfig] = []
    monkeypatch.setattr(run_cmd, "_execute", configs.append)
    return configs


# ---------------------------------------------------------------- help


def test_run_help_shows_every_config_option_with_the_config_default() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0, result.output
    rows = help_rows(result.stdout)
    for name in CONFIG_OPTIONS:
        assert option(name) in rows, f"{name} has no option"
        default = ExperimentConfig.model_fields[name].default
        if default is not None:
            assert f"[default: ({default})]" in rows[option(name)], rows[option(name)]
    assert "--prompt-field" in rows and "[default: (prompt)]" in rows["--prompt-field"]
    assert "INTEGER" in rows["--n"] and "FLOAT" in rows["--baseline-s"] and "TEXT" in rows["--model"]
    assert "[auto|fp32|fp16|bf16]" in rows["--precision"] and "[auto|cuda|cpu]" in rows["--device"]
    assert "[default: (llem-mlflow)]" in rows["--experiment-name"]
    assert "MLFLOW_TRACKING_URI" in rows["--tracking-uri"] and "[default:" not in rows["--run-name"]


@pytest.mark.parametrize("command", [[], ["run"], ["config"], ["log"]])
def test_dash_h_is_help(command: list[str]) -> None:
    short, long = invoke(*command, "-h"), invoke(*command, "--help")
    assert short.exit_code == 0 and long.exit_code == 0, short.output
    assert short.stdout == long.stdout and "Usage: " in short.stdout


@pytest.mark.parametrize("command", [[], ["run"], ["config"], ["log"]])
def test_boolean_flags_take_no_value(command: list[str]) -> None:
    text = invoke(*command, "--help").stdout
    assert "<bool>" not in text and "BOOLEAN" not in text
    rows = help_rows(text)
    assert rows["--help"].split()[1:4] == ["--help", "-h", "Show"]  # the help text follows, no type
    flag = {(): "--version", ("run",): "--no-mlflow", ("config",): "--no-mlflow"}.get(tuple(command))
    if flag:
        assert rows[flag].split()[2] in ("Print", "Write"), rows[flag]


def test_installed_script_help_and_dash_h() -> None:
    if not SCRIPT.exists():
        pytest.skip(f"the llem-mlflow script is not installed next to {sys.executable}")
    env = {**WIDE, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [str(SCRIPT), "run", "-h"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    rows = help_rows(proc.stdout)
    assert "[default: (8)]" in rows["--batch-size"] and "[default: (0.015)]" in rows["--sampling-interval-s"]
    assert "<bool>" not in proc.stdout and rows["--no-mlflow"].split()[2] == "Write"


def test_help_imports_no_vendor_library_and_the_cli_no_rich() -> None:
    code = (
        "import sys\n"
        "import llem_mlflow.cli.app\n"
        "print('rich' in sys.modules)\n"
        "try:\n"
        "    llem_mlflow.cli.app.app(['run', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.splitlines()[0] == "False", "importing the CLI must not import rich"
    assert out.splitlines()[-1] == "[]"


# ---------------------------------------------------------------- values: '' is unset, one error path


def test_empty_values_are_unset(captured: list[ExperimentConfig]) -> None:
    args = [arg for name in CONFIG_OPTIONS for arg in (option(name), "")]
    result = invoke("run", "", *args)
    assert result.exit_code == 0, result.output
    assert captured == [ExperimentConfig()]


def test_empty_values_keep_the_yaml(tmp_path: Path, captured: list[ExperimentConfig]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: llem/tiny-gpt2\nn: 4\nbatch_size: 2\nbaseline_s: 0.5\n")
    result = invoke("run", str(path), "--n", "", "--batch-size", "", "--model", "", "--seed", "7")
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    assert (cfg.model, cfg.n, cfg.batch_size, cfg.baseline_s, cfg.seed) == ("llem/tiny-gpt2", 4, 2, 0.5, 7)


def test_mlflow_run_spelling_config_option_and_underscores(
    tmp_path: Path, captured: list[ExperimentConfig]
) -> None:
    # `mlflow run . -P config=c.yaml -P max_output_tokens=7` runs `llem-mlflow run --config c.yaml
    # --max_output_tokens 7`.
    path = tmp_path / "c.yaml"
    path.write_text("n: 4\nmax_output_tokens: 5\n")
    result = invoke("run", "--config", str(path), "--max_output_tokens", "7", "--warmup_batches", "")
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    assert (cfg.n, cfg.max_output_tokens, cfg.warmup_batches) == (4, 7, 1)
    assert invoke("run", str(path), "--config", str(path)).exit_code == 0


def test_two_different_config_files_exit_2(tmp_path: Path, captured: list[ExperimentConfig]) -> None:
    result = invoke("run", "a.yaml", "--config", "b.yaml")
    assert result.exit_code == 2 and captured == []
    assert result.stderr == "error: two config files given (a.yaml and --config b.yaml); give one\n"


def test_flags_are_validated_by_the_config(captured: list[ExperimentConfig]) -> None:
    result = invoke("run", "-n", "3", "--baseline-s", "0.25", "--prompt-field", "text", "--no-mlflow")
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    assert (cfg.n, cfg.baseline_s, cfg.prompt_field, cfg.mlflow) == (3, 0.25, "text", False)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--n", "abc"], "n"),
        (["--n", "1.5"], "n"),
        (["--n", "-1"], "n"),
        (["--batch-size", "0"], "batch_size"),
        (["--baseline-s", "soon"], "baseline_s"),
        (["--precision", "fp8"], "precision"),
        (["--device", "tpu"], "device"),
        (["--prompt-field", ""], None),  # unset, so valid: the next flag is the bad one
    ],
)
@pytest.mark.parametrize("command", ["run", "config"])
def test_bad_value_is_one_line_naming_the_field(
    command: str, args: list[str], field: str | None, captured: list[ExperimentConfig]
) -> None:
    if field is None:
        args, field = [*args, "--sampling-interval-s", "2"], "sampling_interval_s"
    result = invoke(command, *args)
    assert result.exit_code == 2
    assert result.stdout == "" and captured == []
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid config: {field}: "), result.stderr


# ---------------------------------------------------------------- progress display


class RecordingFile(io.StringIO):
    """A text file that remembers which threads wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[int] = []

    def write(self, s: str) -> int:
        self.writers.append(threading.get_ident())
        return super().write(s)


def terminal(file: io.StringIO) -> Console:
    return Console(file=file, force_terminal=True, width=100, color_system=None)


def test_bars_on_a_terminal_show_done_total_and_elapsed() -> None:
    out = io.StringIO()
    with ConsoleProgress(terminal(out)) as progress:
        progress.stage("loading gpt2 (auto weights)")
        for done in range(2):
            progress.batch("warm-up", done, 1)
        for done in range(5):
            progress.batch("measure", done, 4)
        progress.stage("wrote results/x/result.json and timeseries.parquet")
    text = ANSI.sub("", out.getvalue())
    assert "[llem] loading gpt2 (auto weights)" in text
    assert "[llem] wrote results/x/result.json and timeseries.parquet" in text
    final = [line for line in text.splitlines() if "batches" in line][-2:]  # the last frame
    assert "warm-up" in final[0] and "1/1 batches" in final[0] and "0:00:00" in final[0]
    assert "measure" in final[1] and "4/4 batches" in final[1] and "0:00:00" in final[1]


def test_display_starts_with_the_first_batch() -> None:
    out = io.StringIO()
    with ConsoleProgress(terminal(out)) as progress:
        progress.stage("loading gpt2 (auto weights)")  # downloads print their own progress here
        time.sleep(0.5)  # two refresh periods
        assert ANSI.sub("", out.getvalue()) == "[llem] loading gpt2 (auto weights)\n"
        progress.batch("warm-up", 0, 1)
    assert "0/1 batches" in ANSI.sub("", out.getvalue())


def test_batch_only_updates_memory_and_returns_at_once() -> None:
    out = RecordingFile()
    main = threading.get_ident()
    with ConsoleProgress(terminal(out)) as progress:
        progress.batch("measure", 0, 10_000)
        out.writers.clear()
        start = time.perf_counter()
        for done in range(1, 10_001):
            progress.batch("measure", done, 10_000)
        elapsed = time.perf_counter() - start
        assert main not in out.writers, "batch() wrote to the terminal itself"
    assert elapsed < 2.0, f"10,000 batch() calls took {elapsed:.2f} s"  # ~10 us each; 2 shared cores


def test_no_terminal_means_stage_lines_only(capsys: pytest.CaptureFixture[str]) -> None:
    with ConsoleProgress() as progress:
        progress.stage("measuring 4 prompts in 2 batches")
        progress.batch("measure", 1, 2)
        progress.batch("measure", 2, 2)
        progress.stage("wrote results/x/result.json and timeseries.parquet")
    captured = capsys.readouterr()
    assert captured.err == (
        "[llem] measuring 4 prompts in 2 batches\n[llem] wrote results/x/result.json and timeseries.parquet\n"
    )
    assert captured.out == ""


def _outcome(tmp_path: Path, **fields: Any) -> Any:
    from llem_mlflow.run.execute import Outcome

    defaults = {"result": build_result(), "result_dir": tmp_path / "run1", "run_id": "abc123"}
    return Outcome(**{**defaults, **fields})


def test_run_drives_the_progress_and_prints_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ExperimentConfig] = []

    def fake_execute(cfg: ExperimentConfig, *, progress: Any, startup_s: float | None) -> Any:
        seen.append(cfg)
        progress.stage("loading gpt2 (auto weights)")
        progress.batch("warm-up", 1, 1)
        progress.batch("measure", 1, 2)
        progress.batch("measure", 2, 2)
        return _outcome(tmp_path)

    monkeypatch.setattr("llem_mlflow.run.execute.execute", fake_execute)
    result = invoke("run", "--model", "gpt2", "--n", "4")
    assert result.exit_code == 0, result.output
    assert seen[0].n == 4
    assert result.stderr == "[llem] loading gpt2 (auto weights)\n"  # not a terminal: no bar
    assert result.stdout.splitlines()[-1] == "mlflow run      abc123"


def test_tracking_failure_after_the_run_exits_1_after_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = "MLflow store unreachable. The result is saved; log it later with: llem-mlflow log X"
    monkeypatch.setattr(
        "llem_mlflow.run.execute.execute",
        lambda cfg, progress, startup_s: _outcome(tmp_path, run_id=None, tracking_error=message),
    )
    result = invoke("run")
    assert result.exit_code == 1
    assert f"result folder   {tmp_path / 'run1'}" in result.stdout
    assert result.stdout.splitlines()[-1] == "mlflow run      not logged (see the error below)"
    assert result.stderr == f"error: {message}\n"


# ---------------------------------------------------------------- summary


def test_summary_reads_as_labelled_lines(tmp_path: Path) -> None:
    outcome = _outcome(tmp_path)
    r = outcome.result
    text = cli.summary(outcome)
    assert text.splitlines() == [
        f"model           gpt2 ({r.weights} weights, {r.precision}, {r.device})",
        "workload        4 prompts: 128 tokens in, 128 out",
        "time            2.00 s measured, 64.0 output tokens/s",
        "energy          1,301 J +- 28 J on 2 GPUs (nvml)",
        "net of idle     1,011 J (idle 145.0 W)",
        "energy/token    10.16 J per output token",
        f"result folder   {tmp_path / 'run1'}",
        "mlflow run      abc123",
    ]


def test_summary_without_energy_says_why(tmp_path: Path) -> None:
    result = build_result(energy=False).model_copy(
        update={"warnings": ["energy not measured: the model runs on cpu, not an NVIDIA GPU"]}
    )
    text = cli.summary(_outcome(tmp_path, result=result, run_id=None))
    assert "energy          not measured: the model runs on cpu, not an NVIDIA GPU" in text
    assert "warnings        1 (see result.json)" in text
    assert text.splitlines()[-1] == "mlflow run      not logged (--no-mlflow)"


@pytest.mark.parametrize(
    ("joules", "text"),
    [(1301.0, "1,301 J"), (10.1640625, "10.16 J"), (0.0123, "12.3 mJ"), (2e-6, "2 uJ"), (0.0, "0 J")],
)
def test_joules_are_readable(joules: float, text: str) -> None:
    assert cli._joules(joules) == text


# ---------------------------------------------------------------- config


def config_rows(text: str) -> dict[str, str]:
    """``label  value`` lines of `llem-mlflow config` (labels fill 16 columns)."""
    return {line[:16].strip(): line[16:] for line in text.splitlines() if line[:16].strip()}


def test_config_says_what_a_run_here_would_use(monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(
        "config",
        MLFLOW_TRACKING_URI="https://alice:s3cret@tracking.invalid/api?token=abc&x=1",
        MLFLOW_EXPERIMENT_NAME="mine",
    )
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout and "abc" not in result.stdout and result.stderr == ""
    rows = config_rows(result.stdout)
    assert rows["llem-mlflow"] == __version__
    assert {"torch", "transformers", "mlflow"} <= set(rows)
    assert rows["device"].split()[0] in ("cpu", "cuda") and "auto" in rows["device"]
    assert rows["precision"].split()[0] in ("fp32", "bf16", "fp16")
    assert rows["energy source"].split()[0] in ("none", "nvml")
    assert rows["tracking store"] == "https://tracking.invalid/api?token=***&x=1"
    assert rows["experiment"] == "mine"
    assert rows["output folder"] == str(Path.cwd().resolve() / "results")
    assert "llem/tiny-gpt2" in result.stdout and "gpt2-xl" in rows["shipped models"]


def test_config_resolves_a_yaml_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("device: cpu\nprecision: fp16\noutput_dir: out\n")
    result = invoke("config", "c.yaml", "--model", "llem/tiny-llama", "--experiment-name", "e1", "--n", "")
    assert result.exit_code == 0, result.output
    rows = config_rows(result.stdout)
    assert (rows["model"], rows["device"], rows["precision"]) == ("llem/tiny-llama", "cpu", "fp16")
    assert rows["tracking store"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert rows["experiment"] == "e1" and rows["output folder"] == str(tmp_path.resolve() / "out")
    assert not (tmp_path / "mlflow.db").exists(), "config must not open the store"
    off = config_rows(invoke("config", "--no-mlflow").stdout)
    assert off["tracking store"].startswith("none") and "experiment" not in off


def resolved_rows(text: str) -> dict[str, str]:
    """The ``resolved.<field>  value`` rows of `llem-mlflow config`, keyed by field."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("resolved."):
            name, value = line.split(None, 1)
            rows[name.removeprefix("resolved.")] = value
    return rows


def config_hash(text: str) -> str:
    return config_rows(text)["config hash"].split()[0]


def test_config_shows_what_the_flags_resolve_to_and_their_hash(tmp_path: Path) -> None:
    default = invoke("config", "--output-dir", str(tmp_path))
    flagged = invoke("config", "--output-dir", str(tmp_path), "--batch-size", "99", "--cycles", "9")
    assert default.exit_code == 0 and flagged.exit_code == 0, default.output + flagged.output
    before, after = resolved_rows(default.stdout), resolved_rows(flagged.stdout)
    assert (after["batch_size"], after["cycles"]) == ("99", "9")
    assert (before["batch_size"], before["cycles"]) == (
        str(ExperimentConfig.model_fields["batch_size"].default),
        str(ExperimentConfig.model_fields["cycles"].default),
    )
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(flagged.stdout))
    assert config_hash(flagged.stdout) != config_hash(default.stdout)
    assert {k for k in before if before[k] != after[k]} == {"batch_size", "cycles"}
    assert "provisional" in config_rows(default.stdout)["config hash"]  # weights: auto is decided at load
    assert after["weights"].startswith("decided when the model loads")


def test_config_hash_is_the_runs_hash_when_nothing_is_left_to_the_load(tmp_path: Path) -> None:
    from llem_mlflow.run.execute import execute

    flags = {"model": "llem/tiny-gpt2", "weights": "random", "attention": "eager", "device": "cpu"}
    flags |= {"n": "2", "max_output_tokens": "2", "batch_size": "2", "baseline_s": "0"}
    flags["output_dir"] = str(tmp_path)
    shown = invoke("config", *[a for k, v in flags.items() for a in (option(k), v)], "--no-mlflow")
    assert shown.exit_code == 0, shown.output
    assert config_rows(shown.stdout)["config hash"] == config_hash(shown.stdout)  # exact: no note
    result = execute(ExperimentConfig.model_validate({**flags, "mlflow": False})).result
    assert config_hash(shown.stdout) == result.measurement_config_hash


@pytest.mark.skipif(cuda_available(), reason="needs a machine where torch sees no GPU")
def test_config_refuses_a_device_map_without_gpus_as_run_does(tmp_path: Path) -> None:
    args = ["--device-map", "balanced", "--output-dir", str(tmp_path), "--no-mlflow"]
    ran, shown = invoke("run", *args), invoke("config", *args)
    assert ran.exit_code == 2 and shown.exit_code == ran.exit_code
    assert shown.stdout == "" and shown.stderr.splitlines() == ran.stderr.splitlines()[-1:]
    assert shown.stderr.startswith("error: device_map splits the model over CUDA GPUs, but torch sees none")
    assert list(tmp_path.iterdir()) == []  # run refused before it measured anything


def test_config_refuses_a_missing_dataset_as_run_does(tmp_path: Path) -> None:
    args = ["--dataset", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "out"), "--no-mlflow"]
    ran, shown = invoke("run", *args), invoke("config", *args)
    assert ran.exit_code == 2 and shown.exit_code == 2 and shown.stdout == ""
    assert shown.stderr.splitlines() == ran.stderr.splitlines()[-1:] and "none.jsonl" in shown.stderr


def test_config_without_torch_or_nvml_has_no_traceback(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # `import torch` now raises ImportError, as when it is missing
        "sys.modules['pynvml'] = None\n"
        "from llem_mlflow.cli.app import app\n"
        "try:\n"
        "    app(['config'])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print(sorted(m for m in ('mlflow', 'pyarrow', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = config_rows(proc.stdout)
    assert rows["device"] == "cpu (auto: torch sees no CUDA device)"
    assert rows["precision"] == "fp32 (auto on cpu)"
    assert rows["energy source"].startswith("none (pynvml is not installed")
    assert proc.stdout.splitlines()[-2:] == ["exit 0", "[]"]


def test_config_shows_batching_only_where_it_is_set() -> None:
    plain = invoke("config", "--model", "llem/tiny-gpt2", "--device", "cpu")
    continuous = invoke("config", "--model", "llem/tiny-gpt2", "--device", "cpu", "--batching", "continuous")
    assert plain.exit_code == 0 and continuous.exit_code == 0, plain.output + continuous.output
    assert "resolved.batching" not in plain.stdout  # the default stays out of the hash, and of the rows
    assert re.search(r"resolved\.batching +continuous", continuous.stdout)
    assert config_rows(plain.stdout)["config hash"] != config_rows(continuous.stdout)["config hash"]
