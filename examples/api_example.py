"""Run one small experiment from Python and print its key figures.

python examples/api_example.py
"""

from llem_mlflow import ExperimentConfig, ExperimentResult, run_experiment

# Logs to the default experiment "llem-mlflow", like the CLI and the README's `mlflow run`.
config = ExperimentConfig(model="gpt2", n=4, batch_size=2, max_output_tokens=16)
result: ExperimentResult = run_experiment(config)

print(f"experiment   {result.experiment_id}  (config hash {result.measurement_config_hash})")
print(f"tokens       {result.output_tokens} generated at {result.avg_tokens_per_second:.1f} tok/s")
if result.total_energy_j is None:
    print("energy       not measured (no NVIDIA GPU)")
else:
    print(f"energy       {result.total_energy_j:.1f} J, {result.avg_energy_per_token_j:.4f} J/token")
