"""The old import path ``llem_mlflow.result``, kept for users who hold it: ``llem_mlflow.results.schema``."""

import sys

from llem_mlflow.results import schema

sys.modules[__name__] = schema
