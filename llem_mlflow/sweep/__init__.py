"""Sweeps: many experiments from one plan (``plan``), measured one after another (``measuring``) or one
process per GPU (``parallel``) under a parent run, then summarized (``summary``); ``execute`` runs them.

May import run, tracking, results, figures, measure, backends and the base modules; never cli.
"""
