"""One experiment in order: pre-flight checks (``preflight``), the GPUs it measures (``gpus``), the run
itself (``execute``), the result derived (``derive``), written (``record``) and logged (``publish``), an
interrupted run's end (``stop``); and ``track()`` for a block of the caller's code.

May import tracking, results, figures, measure, backends and the base modules; never sweep or cli.
"""
