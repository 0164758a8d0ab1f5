"""The package version (read by setuptools and by ``llem-mlflow --version``)."""

__version__ = "0.1.0"
