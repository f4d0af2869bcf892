"""Exceptions that the CLI turns into one clear line and exit status 2."""

from __future__ import annotations


class FacesynthError(Exception):
    """Base class: the message is shown to the user as one line."""

    exit_code = 2


class RecipeError(FacesynthError):
    """A recipe file is malformed; the message names the file and key path."""


class PlanError(FacesynthError):
    """A plan cannot be built (impossible size, unknown recipe, ...)."""


class ModelError(FacesynthError):
    """A model or CLIP checkpoint cannot be found or loaded."""


class OutputError(FacesynthError):
    """The output folder is unusable, belongs to another run, or is damaged."""


def shorten(text: str, limit: int = 120) -> str:
    """One line of at most ``limit`` characters, for messages and tables (a reason can be any length)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line reports."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class WriteError(OutputError):
    """The output folder could not be written (disk full, permissions); work done so far is kept."""

    exit_code = 1
