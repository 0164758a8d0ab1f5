"""Driving an OpenAI-compatible inference server: its process (launch or attach, health, stop), a
streaming HTTP client, and the load generator (closed and open loop). Standard library only; it knows
nothing of NVML or MLflow (``measure/`` and ``run/`` call it).
"""
