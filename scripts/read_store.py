"""Print what llem-mlflow logged in an MLflow store: one block per run of an experiment.

python scripts/read_store.py sqlite:///mlflow.db [EXPERIMENT_NAME]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient


def main(uri: str, experiment: str = "llem-mlflow") -> None:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"no experiment {experiment!r} in {uri}")
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        rid = run.info.run_id
        print(f"run {rid} status={run.info.status}")
        print("  tags:", {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("llem.")})
        print("  metrics:", {k: round(v, 6) for k, v in sorted(run.data.metrics.items())})
        print("  params:", dict(sorted(run.data.params.items())))
        for key in sorted(k for k in run.data.metrics if k.startswith("power/")):
            hist = client.get_metric_history(rid, key)
            span_s = (hist[-1].timestamp - hist[0].timestamp) / 1000 if hist else 0
            print(f"  {key}: {len(hist)} points over {span_s:.2f} s")
        print("  artifacts:", [a.path for a in client.list_artifacts(rid)])
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(rid, "result.json", tmp)
            result = json.loads(Path(path).read_text())
        window = result["windows"]["measure"]
        print(
            f"  window {window['end_s'] - window['start_s']:.3f} s; energy breakdown:",
            json.dumps(result["energy"]),
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
