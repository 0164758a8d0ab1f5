"""Result files on disk: the per-experiment folder, result.json, the Parquet power trace and
``mlflow_run.json`` (the MLflow run that holds the result, so logging a folder twice is a no-op).

This is the only module that imports pyarrow (lazily). Every write is atomic: a temp file in the
target folder, fsync, then ``os.replace``, so a crash never leaves a half-written result.

Trace columns added after the first release (``_ADDED_FIELDS``: ``compute_processes``) may be absent
from older trace files; those files still load, the missing fields read back as None.
"""

from __future__ import annotations

import json
import os
import uuid
from array import array
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import FLOAT_FIELDS, INT_FIELDS, NO_INT, SLOW_FIELDS, GpuColumns, PowerTrace
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.secrets import scrub_secrets

if TYPE_CHECKING:
    import pyarrow as pa

RESULT_FILE = "result.json"
TRACE_FILE = "timeseries.parquet"
REQUESTS_FILE = "requests.parquet"  # the server scenario's per-request table
RUN_RECORD_FILE = "mlflow_run.json"
_RUN_RECORD_KEYS = ("run_id", "experiment_id", "tracking_uri", "logged_at")
OTHER_PHASE = "other"
_META_INTERVAL = b"llem.interval_s"
_META_WINDOWS = b"llem.windows"
#: Parquet metadata key of a note on the trace (set when it has no samples: ``EMPTY_TRACE_NOTE``).
META_NOTE = b"llem.note"
EMPTY_TRACE_NOTE = (
    "no GPU power samples: energy not measured (the model ran on a CPU or other non-NVIDIA device, or "
    "every power reading failed); result.json's warnings say which"
)
#: Nullable columns that older trace files lack; reading such a file leaves them None.
_ADDED_FIELDS = frozenset({"compute_processes"})


class FolderTaken(TrackingError):
    """The result folder exists already: another run (or process) holds it."""


def result_dir(output_dir: Path, experiment_id: str) -> Path:
    """Create ``output_dir/experiment_id`` and return it; it must not exist yet.

    The last folder is created exclusively (``mkdir`` without ``exist_ok``): of several processes
    claiming one name, exactly one gets it, so results never share a folder or overwrite each other.

    Raises:
        FolderTaken: the folder exists (the caller may pick another name).
        TrackingError: the folder cannot be created.
    """
    target = Path(output_dir) / experiment_id
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir()
    except FileExistsError:
        raise FolderTaken(
            f"result folder {target} already exists; refusing to overwrite results. "
            "Choose another output_dir or move the old results away."
        ) from None
    except OSError as exc:
        raise TrackingError(f"cannot create result folder {target}: {exc}; check output_dir") from exc
    return target


def claim_result_dir(output_dir: Path, make_id: Callable[[], str], attempts: int = 5) -> tuple[Path, str]:
    """A new result folder named ``make_id()`` (a fresh name when one is taken); (folder, name).

    Raises:
        TrackingError: ``attempts`` names were all taken, or the folder cannot be created.
    """
    for _ in range(attempts - 1):
        name = make_id()
        try:
            return result_dir(output_dir, name), name
        except FolderTaken:
            continue
    name = make_id()
    return result_dir(output_dir, name), name


def write_text_atomic(target: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically (see ``atomic_write``)."""
    data = text.encode()
    return atomic_write(Path(target), lambda f: f.write(data))


def write_result_json(result: ExperimentResult, directory: Path) -> Path:
    """Write ``result.json`` (indented JSON of the model) atomically into ``directory``."""
    data = result.model_dump_json(indent=2).encode()
    return atomic_write(Path(directory) / RESULT_FILE, lambda f: f.write(data))


def read_result_json(path: Path) -> ExperimentResult:
    """Read and validate a ``result.json``.

    Raises:
        TrackingError: the file is missing or does not hold a valid ExperimentResult.
    """
    _present(Path(path), "result file")
    try:
        return ExperimentResult.model_validate_json(Path(path).read_bytes())
    except OSError as exc:
        raise TrackingError(f"cannot read result file {path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        raise TrackingError(
            f"{path} is not a valid llem result (schema 2.0): {exc.error_count()} problem(s), first "
            f"{where}: {first['msg']}"
        ) from exc


def _present(path: Path, what: str) -> None:
    """``path`` is a file; else one line saying it is missing (or not a file) and what a result folder holds.

    Raises:
        TrackingError: ``path`` is missing, or is a folder or another non-file.
    """
    if path.is_file():
        return
    state = "is missing" if not path.exists() else "is not a file"
    raise TrackingError(
        f"{what} {path} {state}: a result folder holds {RESULT_FILE} and {TRACE_FILE}, both are needed; "
        "give the folder the run wrote, or restore the file"
    )


def write_trace_parquet(
    trace: PowerTrace, directory: Path, windows: Mapping[str, tuple[float, float]]
) -> Path:
    """Write the trace as a long-format Parquet table (one row per sample) atomically.

    ``phase`` names the first window ``(start_s, end_s)`` that contains the sample, else "other".
    The file metadata keeps ``interval_s`` and the windows as JSON. An empty trace writes a valid
    file with the schema and zero rows, and the metadata key ``llem.note`` says why it is empty.
    """
    import pyarrow.parquet as pq

    table = _noted(_trace_table(trace, windows))

    def write(f: IO[bytes]) -> None:
        pq.write_table(table, f)

    return atomic_write(Path(directory) / TRACE_FILE, write)


def write_requests_parquet(rows: list[dict[str, Any]], columns: Sequence[str], directory: Path) -> Path:
    """Write the server scenario's per-request table (one row per request, ``columns`` in order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.null()) for c in columns})
    table = table.select(list(columns))

    def write(f: IO[bytes]) -> None:
        pq.write_table(table, f)

    return atomic_write(Path(directory) / REQUESTS_FILE, write)


def _noted(table: pa.Table) -> pa.Table:
    """``table`` with ``EMPTY_TRACE_NOTE`` in its metadata (``llem.note``) when it has no rows."""
    if table.num_rows:
        return table
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), META_NOTE: EMPTY_TRACE_NOTE.encode()}
    )


def read_trace_parquet(path: Path) -> PowerTrace:
    """Read a trace written by ``write_trace_parquet`` back into a PowerTrace (the same samples).

    A file without an ``_ADDED_FIELDS`` column (written by an older version) reads with those fields None.

    Raises:
        TrackingError: the file is missing or is not an llem power trace.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    _present(Path(path), "power trace")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise TrackingError(f"cannot read power trace {path}: {exc}") from exc
    meta = table.schema.metadata or {}
    missing = {f.name for f in _schema()} - _ADDED_FIELDS - set(table.column_names)
    if _META_INTERVAL not in meta or missing:
        raise TrackingError(f"{path} is not an llem power trace (missing {sorted(missing) or 'metadata'})")
    return _trace_from_table(table, float(meta[_META_INTERVAL]))


def _trace_from_table(table: pa.Table, interval_s: float) -> PowerTrace:
    """The trace's columns, a batch of rows at a time (no per-row dicts or ``TraceSample`` objects)."""
    trace = PowerTrace(interval_s=interval_s)
    for batch in table.to_batches(max_chunksize=1 << 16):
        n = batch.num_rows
        names = batch.schema.names
        t, g, p, *slow = (
            batch.column(name).to_pylist() if name in names else [None] * n
            for name in ("timestamp_s", "gpu", "power_w", *SLOW_FIELDS)
        )
        for row in zip(t, g, p, *slow, strict=True):
            values = (row[3], row[4], row[5], row[6], row[7], row[8])
            trace.add(row[0], row[1], row[2], None if all(v is None for v in values) else values)
    return trace


def write_run_record(
    directory: Path, *, run_id: str, experiment_id: str, tracking_uri: str, logged_at: datetime
) -> Path:
    """Write ``mlflow_run.json`` (which MLflow run holds this result) atomically into ``directory``.

    ``tracking_uri`` is stored without credentials; ``logged_at`` as ISO 8601 (UTC).
    """
    record = {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "tracking_uri": scrub_secrets(tracking_uri),
        "logged_at": logged_at.astimezone(timezone.utc).isoformat(),
    }
    data = (json.dumps(record, indent=2) + "\n").encode()
    return atomic_write(Path(directory) / RUN_RECORD_FILE, lambda f: f.write(data))


def read_run_record(directory: Path) -> dict[str, str] | None:
    """The ``mlflow_run.json`` of a result folder; None when absent or not a valid record."""
    try:
        raw = json.loads((Path(directory) / RUN_RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in _RUN_RECORD_KEYS):
        return None
    return {k: raw[k] for k in _RUN_RECORD_KEYS}


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("timestamp_s", pa.float64(), nullable=False),
            pa.field("gpu", pa.int32(), nullable=False),
            pa.field("power_w", pa.float64(), nullable=False),
            pa.field("temperature_c", pa.float64()),
            pa.field("sm_clock_mhz", pa.float64()),
            pa.field("utilization_pct", pa.float64()),
            pa.field("memory_used_b", pa.int64()),
            pa.field("throttle_reasons", pa.int64()),
            pa.field("compute_processes", pa.int32()),
            pa.field("phase", pa.string(), nullable=False),
        ]
    )


def _trace_table(trace: PowerTrace, windows: Mapping[str, tuple[float, float]]) -> pa.Table:
    """One row per sample, GPU by GPU, each in time order; built from the trace's columns."""
    import pyarrow as pa

    schema = _schema()
    parts = [_gpu_arrays(trace.columns(gpu), gpu, windows) for gpu in trace.gpus()]
    arrays = [
        pa.concat_arrays([part[i] for part in parts]) if parts else pa.array([], type=field.type)
        for i, field in enumerate(schema)
    ]
    metadata = {
        _META_INTERVAL: repr(float(trace.interval_s)).encode(),
        _META_WINDOWS: json.dumps({k: [float(a), float(b)] for k, (a, b) in windows.items()}).encode(),
    }
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(metadata))


def _gpu_arrays(c: GpuColumns, gpu: int, windows: Mapping[str, tuple[float, float]]) -> list[pa.Array]:
    """One GPU's columns as Arrow arrays in ``_schema`` order: a slow reading is null where absent."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n, schema = len(c.time_s), _schema()
    time_s = _buffer(pa.float64(), c.time_s)
    record = array("q", [-1]) * n  # per sample: its slow record, -1 for none
    for j, i in enumerate(c.slow_at):
        record[i] = j
    at = _buffer(pa.int64(), record)
    at = pc.if_else(pc.equal(at, -1), pa.scalar(None, pa.int64()), at)
    slow = [_buffer(pa.float64(), c.floats[name]) for name in FLOAT_FIELDS]
    slow = [pc.if_else(pc.is_nan(v), pa.scalar(None, pa.float64()), v) for v in slow]
    ints = [_buffer(pa.int64(), c.ints[name]) for name in INT_FIELDS]
    slow += [pc.if_else(pc.equal(v, NO_INT), pa.scalar(None, pa.int64()), v) for v in ints]
    phase = pa.repeat(pa.scalar(OTHER_PHASE), n)
    for name, (start_s, end_s) in reversed(list(windows.items())):  # the first window that holds it wins
        inside = pc.and_(pc.greater_equal(time_s, start_s), pc.less_equal(time_s, end_s))
        phase = pc.if_else(inside, pa.scalar(name), phase)
    return [
        time_s,
        pa.repeat(pa.scalar(gpu, pa.int32()), n),
        _buffer(pa.float64(), c.power_w),
        *(pc.take(v, at).cast(schema.field(name).type) for name, v in zip(SLOW_FIELDS, slow, strict=True)),
        phase,
    ]


def _buffer(kind: pa.DataType, values: array[Any]) -> pa.Array:
    """An Arrow array over a copy of an ``array`` column's bytes (no per-value Python objects)."""
    import pyarrow as pa

    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values.tobytes())])


def atomic_write(target: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write via a temp file in the target's folder, fsync, then rename over ``target``."""
    tmp_name = str(target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open with 0o666 lets the umask decide the mode (mkstemp would force 0600).
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise TrackingError(f"cannot write {target}: {exc}; check that the folder exists") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TrackingError(f"cannot write {target}: {exc}; check free space and permissions") from exc
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (e.g. Windows); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
