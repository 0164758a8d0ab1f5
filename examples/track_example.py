"""Measure any block of code into MLflow with ``llem_mlflow.run.track``: here, a small training loop.

    python examples/track_example.py

Each epoch is tracked (energy counter at synced edges, power trace) and logged into one MLflow run as
``track/epoch-<k>/energy_j``, ``duration_s``, ``avg_power_w``; the whole loop as ``track/train/...``.
On a machine without an NVIDIA GPU the durations are logged and energy is null.
"""

from __future__ import annotations

import mlflow
import torch

import llem_mlflow


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1)).to(
        device
    )
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4096, 256, device=device), torch.randn(4096, 1, device=device)
    mlflow.set_experiment("llem-mlflow-track")
    with mlflow.start_run(run_name="track-example"), llem_mlflow.run.track("train"):
        for epoch in range(3):
            with llem_mlflow.run.track(f"epoch-{epoch}") as tracked:
                for batch in range(0, len(x), 256):
                    loss = torch.nn.functional.mse_loss(model(x[batch : batch + 256]), y[batch : batch + 256])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
            energy = tracked.total_energy_j
            print(f"epoch {epoch}: {tracked.duration_s:.3f} s, energy {energy} J, loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
