"""What every section of a study spec shares: its error and its strict pydantic base.

:class:`SpecError` names the offending field (and, where there is a fixed choice,
the allowed values); :class:`SpecModel` is the base of every spec section: frozen,
unknown keys refused, no NaN or infinity anywhere. :func:`echo` and :func:`clip_text`
bound what an error message echoes of its input.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

#: Longest echo of an offending value in an error message (characters).
MAX_ECHO_CHARS = 80


class SpecError(ValueError):
    """A study specification is invalid; the message names the field(s)."""


class SpecModel(BaseModel):
    """Base of the spec sections: frozen, ``extra="forbid"``, ``allow_inf_nan=False``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def clip_text(text: str, max_chars: int) -> str:
    """``text`` cut to about ``max_chars`` characters, saying how long it was.

    Error messages echo what they refuse; a value can be anything a file holds (a list
    of a million seeds, an expanded alias bomb), so every echo is clipped.
    """
    if len(text) <= max_chars:
        return text
    return f"{text[: max(max_chars - 3, 0)]}... ({len(text):,} characters)"


def echo(value: Any, max_chars: int = MAX_ECHO_CHARS) -> str:
    """``repr(value)`` for an error message, clipped to ``max_chars`` (:func:`clip_text`)."""
    return clip_text(repr(value), max_chars)
