"""The command line (typer): one module per command group; it alone maps errors to exit codes (``exits``).

It may import every other package (sweep, run, tracking, results, figures, measure, backends, base);
no package imports it (only ``llem_mlflow.__main__``, the ``python -m llem_mlflow`` entry).
"""
