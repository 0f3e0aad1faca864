"""Reading a study spec: YAML loading and validation into the typed spec, once at the edge.

A study is one YAML file (see ``sweeps/``) with a ``dataset`` section
(:class:`~hrtem_ray.spec.dataset.DatasetSpec`), read by ``hrtem-ray simulate``, and the
sweep sections (:class:`~hrtem_ray.spec.study.StudySpec`) read by ``hrtem-ray sweep``.
Every field is validated before any compute starts; a pydantic error becomes one
:class:`~hrtem_ray.spec.base.SpecError` that lists each offending field and, where
there is a fixed choice, the allowed values or range.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hrtem_ray.spec.base import SpecError, clip_text, echo
from hrtem_ray.spec.dataset import DatasetSpec, current_dataset_keys
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.spec.types import STORED
from hrtem_ray.spec.yaml_files import load_yaml_file

#: Most fields listed by one spec error (the others are counted), and the longest line.
MAX_ERROR_FIELDS = 20
MAX_ERROR_LINE_CHARS = 300


def _is_union_tag(part: str) -> bool:
    """Whether a pydantic error location part names a validator or a union member."""
    return (
        part.startswith("function-")
        or part in ("float", "int", "str", "none", "ZoneAxisOrientation")
        or "[" in part
    )


def _format_errors(source: str, error: ValidationError, prefix: str = "") -> str:
    lines = [f"invalid study spec {source}:"]
    located = [
        (".".join(str(p) for p in err["loc"] if not _is_union_tag(str(p))), err)
        for err in error.errors()
    ]
    for loc, err in located:
        # a union member's type error is noise when another member names a deeper field
        if (err["type"].endswith("_type") or err["type"] == "literal_error") and any(
            other.startswith(f"{loc}.") for other, _ in located
        ):
            continue
        loc = ".".join(p for p in (prefix, loc) if p)
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, Mapping) or got is None else f" (got {echo(got)})"
        # whole-section checks name their fields in the message itself
        named = not loc or loc == prefix or msg.startswith(f"{loc}.")
        line = f"  {msg}" if named else f"  {loc}: {msg}{shown}"
        lines.append(clip_text(line, MAX_ERROR_LINE_CHARS))
    if len(lines) > MAX_ERROR_FIELDS + 1:
        more = len(lines) - 1 - MAX_ERROR_FIELDS
        lines = [*lines[: MAX_ERROR_FIELDS + 1], f"  ... and {more:,} more"]
    return "\n".join(lines)


def read_spec_file(path: str | Path) -> dict:
    """The mapping of sections of a study spec file, read strictly
    (:func:`hrtem_ray.spec.yaml_files.load_yaml_file`: no duplicate keys, no alias bombs).

    Raises
    ------
    SpecError
        Missing file, invalid YAML, a duplicate key, an alias bomb, or not a mapping.
    """
    path = Path(path)
    raw = load_yaml_file(path)
    if not isinstance(raw, dict):
        raise SpecError(
            f"study spec {path} must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


def _context(base_dir: str | Path | None, stored: bool = False) -> dict[str, Any]:
    """Validation context: the folder that relative CIF paths (``{cif: PATH}``) start from,
    and whether the spec is one hrtem-ray stored itself (:data:`~hrtem_ray.spec.types.STORED`)."""
    return {"spec_dir": None if base_dir is None else str(base_dir), STORED: stored}


def parse_dataset_spec(
    raw: Mapping[str, Any], source: str = "<dict>", base_dir: str | Path | None = None
) -> DatasetSpec:
    """Validate a ``dataset`` section (a mapping) into a :class:`DatasetSpec`.

    ``base_dir`` is the folder of relative CIF paths (the spec file's; default: the
    current directory).
    """
    try:
        return DatasetSpec.model_validate(dict(raw), context=_context(base_dir))
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc, prefix="dataset")) from None


def parse_study_spec(
    raw: Mapping[str, Any],
    source: str = "<dict>",
    base_dir: str | Path | None = None,
    stored: bool = False,
) -> StudySpec:
    """Validate a whole study (a mapping) into a :class:`StudySpec` (``base_dir``: as
    :func:`parse_dataset_spec`; ``stored``: see :func:`parse_stored_study_spec`)."""
    if "dataset" not in raw:
        raise SpecError(f"invalid study spec {source}:\n  dataset: section is required")
    try:
        return StudySpec.model_validate(dict(raw), context=_context(base_dir, stored))
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from None


def parse_stored_study_spec(raw: Mapping[str, Any], source: str = "<dict>") -> StudySpec:
    """Validate a study spec hrtem-ray stored itself (``study.json``), also one stored
    before a field rename (see :func:`current_dataset_keys`) or before a refusal that
    protects planning new work was added (:data:`~hrtem_ray.spec.types.STORED`)."""
    raw = dict(raw)
    if isinstance(raw.get("dataset"), Mapping):
        raw["dataset"] = current_dataset_keys(raw["dataset"])
    return parse_study_spec(raw, source=source, stored=True)


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    """Read only the ``dataset`` section of a study YAML file."""
    raw = read_spec_file(path)
    if "dataset" not in raw:
        raise SpecError(f"invalid study spec {path}:\n  dataset: section is required")
    return parse_dataset_spec(
        raw["dataset"] or {}, source=str(path), base_dir=Path(path).resolve().parent
    )


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a whole study YAML file."""
    return parse_study_spec(
        read_spec_file(path), source=str(path), base_dir=Path(path).resolve().parent
    )
