"""The typer plumbing the commands share, and the config options generated from ``ExperimentConfig``.

``config_options()`` makes one ``--<field>`` option per ``ExperimentConfig`` field (but ``mlflow``,
which is ``--no-mlflow``): the field's name gives the option's name (``_`` and ``-`` both accepted, as
``mlflow run -P batch_size=2`` passes ``--batch_size 2``), its type the metavar (INTEGER, FLOAT, TEXT or
the choices), its default the shown default, its description and limits the help. The config is their
one source; ``_CLI_HELP`` holds the few help texts a command line needs in other words.

Every config option is typed ``str | None`` and defaults to None, so an unset flag never overrides a
YAML config, and ``''`` (what ``mlflow run`` passes for a parameter the user left out) also means
unset. Pydantic validates the values, so a bad flag and a bad YAML value take the same path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

from llem_mlflow.config import DEFAULT_EXPERIMENT, ExperimentConfig, limits

F = TypeVar("F", bound=Callable[..., Any])


def _plain_flags(params: Any) -> Any:
    """Boolean flags take no value: show ``--no-mlflow``, not ``--no-mlflow <bool>``."""
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose boolean flags show no metavar."""

    def get_params(self, ctx: Any) -> Any:
        return _plain_flags(super().get_params(ctx))


class Group(TyperGroup):
    """The command group, its boolean flags shown as ``Command``'s are."""

    def get_params(self, ctx: Any) -> Any:
        return _plain_flags(super().get_params(ctx))


def dashes(token: str) -> str:
    """An option name as the command line spells it: ``batch_size`` -> ``batch-size``."""
    return token.replace("_", "-")


def params_of(*commands: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters of ``commands``, in order, annotations evaluated (typer's options among them)."""
    return [p for c in commands for p in inspect.signature(c, eval_str=True).parameters.values()]


def with_params(params: list[inspect.Parameter]) -> Callable[[F], F]:
    """Give the decorated command (taking ``**flags``) the parameters ``params``; typer reads them."""

    def decorate(func: F) -> F:
        func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return func

    return decorate


# ---------------------------------------------------------------- config options from the model

#: Fields that are no option of their own (``mlflow`` is ``--no-mlflow``).
_NOT_OPTIONS = frozenset({"mlflow"})
#: Short flags, by field.
_SHORT = {"n": "-n"}
#: Help in a command line's words: fields without a description, or whose flag needs other words
#: (how to turn it on, its unit, what it works with). Every other option's help is the description.
_CLI_HELP = {
    "backend": "Inference backend.",
    "weights": "auto: pretrained if they can be had, else random (with a warning).",
    "trust_remote_code": "true: run Python code from the model's repo (read it first).",
    "device": "auto: cuda when torch sees a GPU, else cpu.",
    "seed": "Random seed (prompts, random weights).",
    "cycles": "Measured windows, model loaded once; 2+ give 95% intervals.",
    "device_map": "Split over GPUs: auto, balanced, sequential or JSON {module: gpu}.",
    "cache": "KV cache: dynamic, or static (preallocated; needed by --compile).",
    "carbon_intensity_g_per_kwh": "Grid gCO2/kWh for a carbon figure (no lookup).",
    "tracking_uri": "MLflow tracking URI.",
}
#: The default ``--help`` shows where the field's own (None) means one decided later.
_SHOWN_DEFAULT = {"tracking_uri": "MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"}


def config_options() -> list[inspect.Parameter]:
    """One parameter per config field, in the config's order: ``Annotated[str | None, Option]``."""
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None,
            annotation=Annotated[str | None, _option(name)],
        )
        for name in ExperimentConfig.model_fields
        if name not in _NOT_OPTIONS
    ]


def _option(field: str) -> Any:
    """Field ``field``'s option: names, metavar, shown default and help, all from the config."""
    names = ("--" + dashes(field), _SHORT[field]) if field in _SHORT else ()
    return typer.Option(*names, metavar=_metavar(field), show_default=_default_text(field), help=_help(field))


def _metavar(field: str) -> str:
    """INTEGER, FLOAT, TEXT or the choices ``[a|b]`` of ``ExperimentConfig``'s field type."""
    annotation = ExperimentConfig.model_fields[field].annotation
    if get_origin(annotation) in (Union, UnionType):  # `str | None`: the non-None member
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return "[" + "|".join(str(choice) for choice in get_args(annotation)) + "]"
    return {int: "INTEGER", float: "FLOAT"}.get(annotation, "TEXT")  # type: ignore[arg-type]


def _default_text(field: str) -> str | bool:
    """The field's default as shown by ``--help`` (False: none to show)."""
    shown = {**_SHOWN_DEFAULT, "experiment_name": DEFAULT_EXPERIMENT}
    default = ExperimentConfig.model_fields[field].default
    return shown.get(field, False if default is None else str(default))


def _help(field: str) -> str:
    """The description (or ``_CLI_HELP``'s words), its limits last: ``<help> Allowed: <limits>.``."""
    bounds = limits(field)
    text = _CLI_HELP.get(field) or ExperimentConfig.model_fields[field].description or ""
    if not bounds:
        return text
    return f"{text.replace(f' ({bounds})', '')} Allowed: {bounds}."
