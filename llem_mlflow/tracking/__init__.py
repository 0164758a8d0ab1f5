"""Everything that imports mlflow: stores, runs, logging, reading runs back, the spool."""
