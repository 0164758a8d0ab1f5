"""``python -m llem_mlflow``: the CLI."""

from llem_mlflow.cli.app import main

main()
