"""The result: its schema (``ExperimentResult`` and its parts in ``records``), its MLflow vocabulary
(``naming``), identity, environment, files, quality assessment, comparison and plots.

May import ``figures``, ``measure`` and the base modules only; never ``tracking`` or above, and never mlflow.
"""
