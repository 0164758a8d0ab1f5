"""Raw measurement: GPU devices and counters, the power sampler and trace, windows and stages.

It may import only the base modules (config, errors, protocols, secrets, interrupts) and itself; the
backend reaches it through ``protocols.Backend``, and everything above (figures, results, ...) reads it.
"""
