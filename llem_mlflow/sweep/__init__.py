"""Sweeps: many experiments from one plan, sequential or one process per GPU, under a parent run."""
