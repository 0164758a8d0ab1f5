"""Everything that imports mlflow: stores, runs, logging a result, reading runs back, the spool.

May import results, figures, measure and the base modules; ``client`` lists which module owns what.
"""
