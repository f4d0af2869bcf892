"""Exceptions that the CLI turns into one clear line and exit status 2."""

from __future__ import annotations

import re


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


# Characters that print nothing or reorder what follows: C0 and C1 controls (tab and line breaks aside), DEL,
# bidirectional marks, embeddings, overrides and isolates, zero-width characters and the byte-order mark.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u2064\u2066-\u2069\ufeff]")


def visible(text: str) -> str:
    """``text`` with every control, bidirectional or zero-width character written as its escape (``\\x00``,
    ``\\u202e``), so what a person, a recipe or a folder name wrote can neither hide nor reorder the text around it."""
    return _INVISIBLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                          str(text))


def shorten(text: str, limit: int = 120) -> str:
    """One visible line of at most ``limit`` characters, for messages and tables (a reason can be any length)."""
    text = visible(" ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line reports."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class WriteError(OutputError):
    """The output folder could not be written (disk full, permissions); work done so far is kept."""

    exit_code = 1
