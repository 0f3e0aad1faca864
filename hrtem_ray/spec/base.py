"""What every section of a study spec shares: its error and its strict pydantic base.

:class:`SpecError` names the offending field (and, where there is a fixed choice,
the allowed values); :class:`SpecModel` is the base of every spec section: frozen,
unknown keys refused, no NaN or infinity anywhere.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SpecError(ValueError):
    """A study specification is invalid; the message names the field(s)."""


class SpecModel(BaseModel):
    """Base of the spec sections: frozen, ``extra="forbid"``, ``allow_inf_nan=False``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
