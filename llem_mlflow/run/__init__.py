"""One experiment in order: preflight checks, measuring, deriving, writing, logging; and ``track()``."""
