"""Figures computed from measurements: statistics and intervals, latency, FLOPs and peaks, phases,
quality flags, carbon."""
