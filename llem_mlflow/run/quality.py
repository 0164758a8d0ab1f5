"""The optional quality figure (``quality: perplexity``): the measured model's perplexity on the held-out
text the package ships, taken after every measured window (it never runs inside one), by the backend
that has the model (``TransformersBackend.quality``). Random weights make it meaningless: the result says
so in the figure's note. A server run and a backend without the method get a null figure with the reason.
"""

from __future__ import annotations

import logging

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.protocols import Backend
from llem_mlflow.results.records import QualityFigure
from llem_mlflow.results.schema import ExperimentResult

log = logging.getLogger(__name__)


def with_quality(cfg: ExperimentConfig, result: ExperimentResult, backend: Backend) -> ExperimentResult:
    """``result`` with ``quality`` taken (``cfg.quality != "off"``), else ``result`` itself."""
    if cfg.quality == "off":
        return result
    figure = _perplexity(cfg, result, backend)
    if figure.note:
        log.warning("quality: %s", figure.note)
    return result.model_copy(update={"quality": figure})


def _perplexity(cfg: ExperimentConfig, result: ExperimentResult, backend: Backend) -> QualityFigure:
    take = getattr(backend, "quality", None)
    if cfg.scenario == "server" or not callable(take):
        return QualityFigure(
            metric="perplexity", value=None, note="not available: the model is not in this process"
        )
    try:
        got = take()
    except Exception as exc:  # noqa: BLE001 - a quality figure never fails the measured run
        return QualityFigure(
            metric="perplexity", value=None, note=f"could not be taken: {type(exc).__name__}: {exc}"
        )
    if got is None:
        return QualityFigure(
            metric="perplexity", value=None, note="could not be taken: the model is not loaded"
        )
    note_of = getattr(backend, "quality_note", None)
    note = note_of(result.weights) if callable(note_of) else None
    return QualityFigure(
        metric="perplexity",
        value=got.perplexity,
        tokens=got.tokens,
        window=got.window,
        text_sha256=got.text_sha256,
        seconds=got.seconds,
        note=note,
    )


def _none(why: str) -> QualityFigure:
    return QualityFigure(metric="perplexity", value=None, note=why)
