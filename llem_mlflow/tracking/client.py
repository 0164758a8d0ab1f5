"""The old face of ``tracking`` (it was one module, ``tracking.py``): every name it offered, re-exported
from the module of this package that now owns it. It defines nothing; new code imports the owner:

- ``uris``: where a result goes (tracking URI, experiment name, scheme check, scrubbed URI);
- ``connection``: bounded MLflow retries, quiet loggers, failures as one line, the MLflow version;
- ``store``: a store ready to use (SQL created or migrated whole, once, under a lock) and its client;
- ``runs``: the tags llem sets, a run created exactly once, a run retired, an experiment by name;
- ``claims``: the run already holding a result, half-logged tries retired (exactly once);
- ``run_selection``: which run receives a result (a parent's child, the active run, ``mlflow run``'s);
- ``result_logging``: params, tags, metrics, the power trace, the dataset and the files of a result;
- ``run_endings``: how runs end, the ``mlflow run`` run on a signal, a run a signal cut short;
- ``sweep_runs``: a sweep's parent run and its finished points;
- ``stored_results``: llem results read back out of runs (compare);
- ``tracked_blocks``: a ``run.track`` block logged into the active run;
- ``prefetch``: MLflow imported in the background while the model loads.
"""

from __future__ import annotations

from llem_mlflow.config import DEFAULT_EXPERIMENT
from llem_mlflow.tracking.claims import Claim, claim_result
from llem_mlflow.tracking.connection import (
    HTTP_DEFAULTS,
    SQL_ENGINE_ATTEMPTS,
    mlflow_version,
)
from llem_mlflow.tracking.connection import prepare_mlflow as _prepare_mlflow
from llem_mlflow.tracking.prefetch import PREFETCH_WAIT_S, Prefetch, prefetch
from llem_mlflow.tracking.result_logging import (
    MAX_POWER_POINTS,
    PARAM_CONFLICT_PREFIX,
    _params,
    _prompt_dataset,
    log_text_quietly,
    record_result,
)
from llem_mlflow.tracking.run_endings import (
    CUT_STATUS,
    LoggingCut,
    end_cut,
    end_env_run,
    end_status,
    mlflow_run_keeps_status,
)
from llem_mlflow.tracking.run_selection import default_run_name
from llem_mlflow.tracking.runs import (
    CREATE_TOKEN_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    LLEM_EXPERIMENT_TAG,
    MLFLOW_DEFAULT_EXPERIMENT_ID,
    PARENT_RUN_TAG,
    RETIRED_TAG,
    ChildOf,
    LoggedRun,
    active_run_id,
    create_run_once,
    retire_run,
)
from llem_mlflow.tracking.store import ready_store
from llem_mlflow.tracking.store_probe import DB_PORTS, probe_store
from llem_mlflow.tracking.stored_results import StoredResult, read_results
from llem_mlflow.tracking.sweep_runs import (
    SWEEP_FIELDS_TAG,
    SWEEP_ID_TAG,
    SWEEP_POINT_HASH_TAG,
    SWEEP_POINT_TAG,
    SWEEP_SUPERSEDED_TAG,
    DonePoint,
    SweepParent,
    close_sweep_parent,
    open_sweep_parent,
)
from llem_mlflow.tracking.tracked_blocks import log_tracked
from llem_mlflow.tracking.uris import (
    resolve_experiment_name,
    resolve_tracking_uri,
    scrub_uri,
    target_tracking_uri,
    unknown_scheme,
)

__all__ = [
    "CREATE_TOKEN_TAG",
    "CUT_STATUS",
    "DB_PORTS",
    "DEFAULT_EXPERIMENT",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "HTTP_DEFAULTS",
    "LLEM_EXPERIMENT_TAG",
    "MAX_POWER_POINTS",
    "MLFLOW_DEFAULT_EXPERIMENT_ID",
    "PARAM_CONFLICT_PREFIX",
    "PARENT_RUN_TAG",
    "PREFETCH_WAIT_S",
    "RETIRED_TAG",
    "SQL_ENGINE_ATTEMPTS",
    "SWEEP_FIELDS_TAG",
    "SWEEP_ID_TAG",
    "SWEEP_POINT_HASH_TAG",
    "SWEEP_POINT_TAG",
    "SWEEP_SUPERSEDED_TAG",
    "ChildOf",
    "Claim",
    "DonePoint",
    "LoggedRun",
    "LoggingCut",
    "Prefetch",
    "StoredResult",
    "SweepParent",
    "_params",
    "_prepare_mlflow",
    "_prompt_dataset",
    "active_run_id",
    "claim_result",
    "close_sweep_parent",
    "create_run_once",
    "default_run_name",
    "end_cut",
    "end_env_run",
    "end_status",
    "log_text_quietly",
    "log_tracked",
    "mlflow_run_keeps_status",
    "mlflow_version",
    "open_sweep_parent",
    "prefetch",
    "probe_store",
    "read_results",
    "ready_store",
    "record_result",
    "resolve_experiment_name",
    "resolve_tracking_uri",
    "retire_run",
    "scrub_uri",
    "target_tracking_uri",
    "unknown_scheme",
]
