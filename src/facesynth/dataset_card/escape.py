"""Escaping for the dataset card: text from a person, a recipe or a folder name never changes its structure.

The card template is rendered by :func:`environment`, whose ``finalize`` escapes every
string it prints for Markdown and HTML (:func:`md`), so nothing needs remembering at
each place: a review reason cannot open a comment (``<!--``) or end the generated part
(``<!-- facesynth:end -->``), a recipe's description cannot start a heading, a pipe
cannot split a table cell, and a long value is shortened. Values that land in code take
a filter that is right for code instead: ``py`` (a Python string literal, for snippets)
and ``code`` (inline code). What the template builds itself is :class:`Markup` and is
printed as it is.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

import jinja2
from markupsafe import Markup

from ..errors import _INVISIBLE, shorten

CELL_LIMIT = 120  # characters of a value in the card (a table cell, a name); more is shortened
TEXT_LIMIT = 2000  # characters of a paragraph (a recipe's description)

_PUNCTUATION = re.compile(r"([\\`*\[\]|~])")
_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")  # word-inner underscores never emphasise
_LINE_START = re.compile(r"^([#>+=-])")  # a heading, quote, list or rule where a value starts a line
_ORDERED = re.compile(r"^(\d+)([.)])(\s|$)")  # "1. " would start a numbered list


def md(value: Any, limit: int = CELL_LIMIT) -> Markup:
    """``value`` as literal text in Markdown: one line, shortened, HTML special characters as entities and
    Markdown punctuation backslash-escaped (it renders as itself, in prose and in table cells)."""
    if isinstance(value, Markup):
        return value
    text = html.escape(shorten(str(value), limit), quote=False)
    text = _UNDERSCORE.sub(r"\\_", _PUNCTUATION.sub(r"\\\1", text))
    return Markup(_ORDERED.sub(r"\1\\\2\3", _LINE_START.sub(r"\\\1", text)))


def py(value: Any) -> Markup:
    """``value`` as a Python string literal that is also safe in the Markdown around it: JSON's escapes (valid
    in Python) for quotes, backslashes and newlines, and ``\\uXXXX`` for ``<``, ``>``, ``&`` and backticks."""
    text = json.dumps(str(value), ensure_ascii=False)
    for char in "<>&`":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return Markup(_INVISIBLE.sub(lambda m: f"\\u{ord(m[0]):04x}", text))  # C1, bidi and zero-width: escaped too


_SHELL_SAFE = re.compile(r"[\w.@%+=:,/ $()'\"*?!&;-]+")


def sh(value: Any) -> Markup:
    """``value`` as one shell word inside a code block, single-quoted where it needs it (no ``$``, glob or
    parenthesis is then read by the shell); a value with any other character (a backtick, ``<``, a control
    character), which could end the code block or the card's markers, becomes ``DATASET`` for the reader to
    fill in."""
    import shlex

    text = str(value)
    if not _SHELL_SAFE.fullmatch(text) or _INVISIBLE.search(text):
        return Markup("DATASET")
    return Markup(shlex.quote(text))


def code(value: Any, limit: int = CELL_LIMIT) -> Markup:
    """``value`` as inline code: a ``<code>`` element around :func:`md` text, so no character in it can end it."""
    return Markup(f"<code>{md(value, limit)}</code>")


def _finalize(value: Any) -> Any:
    if isinstance(value, str) and not isinstance(value, Markup):
        return md(value)
    return value


def environment() -> jinja2.Environment:
    """The card's Jinja environment: every printed string escaped by :func:`md` unless it is Markup."""
    env = jinja2.Environment(finalize=_finalize)
    env.filters.update(md=md, py=py, code=code, sh=sh)
    return env
