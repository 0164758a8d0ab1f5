"""The result: its schema (``ExperimentResult``), identity, environment, files, quality assessment,
comparison and plots."""
