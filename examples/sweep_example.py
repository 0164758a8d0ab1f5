"""Run the batch-size x precision sweep from Python and print its summary table.

python examples/sweep_example.py
"""

from llem_mlflow import run_sweep

# Same as `llem-mlflow sweep examples/sweep_batch_precision.yaml`; keyword arguments override the base config.
outcome = run_sweep("examples/sweep_batch_precision.yaml", max_output_tokens=8)

for row in outcome.rows:
    print(f"{row.status:<13} {row.point.label:<40} {row.run_id or ''}")
print()
print(outcome.summary_files[1].read_text())
print(f"parent run   {outcome.parent_run_id}")
for figure, row in outcome.best.items():
    print(f"best {figure:<28} {row.point.label}")
