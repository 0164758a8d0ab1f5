"""Raw measurement: GPU devices and counters, the power sampler and trace, windows and stages."""
