"""The one rule for names that become path components under a study or dataset root.

The study ``name``, structure-domain keys, the domain labels (also those derived
from numbers), ``domains.*`` entries and imported domain names all follow
:data:`SAFE_NAME_PATTERN`, at most :data:`SAFE_NAME_MAX_LENGTH` characters and no
``..``: :func:`safe_name_problem` says why a name breaks it, :func:`is_safe_name`
and :func:`check_safe_name` test and enforce it, and :func:`to_safe_name` makes a
name that follows it from any value (a label read from a table).
"""

from __future__ import annotations

import re

from hrtem_ray.spec.base import SpecError

#: The one rule for names that become path components (file and folder names under a
#: study root): ASCII letters, digits and ``. _ + -``, not starting with ``.`` or
#: ``_``, at most :data:`SAFE_NAME_MAX_LENGTH` characters, and no ``..`` anywhere.
#: Numeric domain labels such as ``-10``, ``2.5`` or ``1e+06`` match it.
SAFE_NAME_PATTERN = r"[A-Za-z0-9+-][A-Za-z0-9._+-]*"
SAFE_NAME_MAX_LENGTH = 128
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)
#: What :func:`to_safe_name` gives for a value with no safe character at all.
EMPTY_SAFE_NAME = "unnamed"


def safe_name_problem(value: object) -> str | None:
    """Why ``value`` is not a safe path component (see :data:`SAFE_NAME_PATTERN`), or None.

    Parameters
    ----------
    value
        Candidate name (anything; only a ``str`` can be safe).

    Returns
    -------
    str or None
        A message without the field name, e.g. ``"'../x' contains '..'"``.

    >>> safe_name_problem("-10") is None
    True
    """
    allowed = (
        f"allowed: {SAFE_NAME_PATTERN} (letters, digits, '.', '_', '+', '-'; "
        f"not starting with '.' or '_'), at most {SAFE_NAME_MAX_LENGTH} characters, no '..'"
    )
    if not isinstance(value, str):
        return f"{value!r} is not a string; {allowed}"
    if not value:
        return f"empty name; {allowed}"
    if len(value) > SAFE_NAME_MAX_LENGTH:
        return f"{value[:40]!r}... has {len(value)} characters; {allowed}"
    if ".." in value:
        return f"{value!r} contains '..'; {allowed}"
    if not _SAFE_NAME.fullmatch(value):
        return f"{value!r} is not a safe name; {allowed}"
    return None


def is_safe_name(value: object) -> bool:
    """Whether ``value`` may become a path component (see :data:`SAFE_NAME_PATTERN`)."""
    return safe_name_problem(value) is None


def check_safe_name(value: object, field: str | None = None) -> str:
    """Return ``value`` if it is a safe path component, else raise :class:`SpecError`.

    Parameters
    ----------
    value
        The name, e.g. a domain label read from a table.
    field
        What the name is, for the message, e.g. ``"domains.pretrain"``; None in a
        pydantic validator, which names the field itself (:class:`SpecError` is a
        ``ValueError``).

    Raises
    ------
    SpecError
        ``"<field>: '<value>' ...; allowed: ..."`` (without ``"<field>: "`` when
        ``field`` is None).
    """
    problem = safe_name_problem(value)
    if problem is not None:
        raise SpecError(problem if field is None else f"{field}: {problem}")
    return value  # type: ignore[return-value]


def to_safe_name(value: object) -> str:
    """A name that follows the rule (:func:`is_safe_name`), made from any value.

    ``str(value)`` with every character outside ``[A-Za-z0-9._+-]`` and every run of
    dots replaced by ``_``, runs of ``_`` made one, leading ``.`` and ``_`` dropped,
    cut to :data:`SAFE_NAME_MAX_LENGTH` characters; :data:`EMPTY_SAFE_NAME` if
    nothing is left. A safe name is returned unchanged.

    >>> to_safe_name("../../x")
    'x'
    >>> to_safe_name("defocus")
    'defocus'
    """
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))
    name = re.sub(r"\.{2,}", "_", name)
    name = re.sub(r"_{2,}", "_", name).lstrip("._")[:SAFE_NAME_MAX_LENGTH]
    return name or EMPTY_SAFE_NAME
