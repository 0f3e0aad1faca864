"""Claiming a dataset root for a spec, and the spec differences that refuse it.

One dataset per directory: ``dataset.json`` (:data:`~hrtem_ray.dataset.manifest.SPEC_FILE`)
is created exclusively (:func:`hrtem_ray.store.conditional.create_exclusive`), so of any
number of concurrent :func:`prepare_root` calls exactly one claims an empty directory.

New imaging domains from stored waves
-------------------------------------
The exit waves of every structure are kept (``keep_exit_waves``, default true),
written before the images. A spec that differs from the stored one only in its
imaging (defocus, dose, focal spread, Cs, output sampling within the stored band,
jitter, mask or calibration parameters; added or removed domains) claims the same
root: ``dataset.json`` is replaced by the new spec, the shards of domains whose
images hash is unchanged are kept untouched, and the other domains are imaged
from the stored waves without multislice (:mod:`hrtem_ray.dataset.pipeline`). A spec
whose exit waves differ (structures, multislice physics, seed, counts, shard size,
generator version) is refused with a :class:`~hrtem_ray.dataset.manifest.DatasetError`
naming each such field (:func:`check_dataset_root` does the same check without writing).
Imported domains are kept through such a change; one that would change their tile grid
(the output pixel size or image size) is refused as well
(:func:`hrtem_ray.dataset.imported.grid_changes`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hrtem_ray.dataset import imported
from hrtem_ray.dataset.manifest import SPEC_FILE, DatasetError, read_record, stored_spec
from hrtem_ray.spec.dataset import GENERATOR_VERSION, DatasetSpec, current_dataset_keys
from hrtem_ray.spec.materials import IDENTITY, without_material_paths
from hrtem_ray.spec.types import MULTISLICE_FIELDS
from hrtem_ray.store import conditional, storage

logger = logging.getLogger(__name__)


def dataset_record(spec: DatasetSpec) -> dict[str, Any]:
    """What ``dataset.json`` holds: the content hash, the generator version and the spec."""
    return {
        "content_hash": spec.content_hash(),
        "generator_version": GENERATOR_VERSION,
        "spec": spec.model_dump(mode="json"),
    }


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key in value:
            out.update(_flatten(value[key], f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _show(value: Any) -> str:
    """A stored or spec value for a message: ``400`` for 400.0, JSON otherwise."""
    if value is _ABSENT:
        return "<absent>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, sort_keys=True)


_ABSENT = object()


def spec_differences(stored: dict[str, Any], spec: DatasetSpec) -> list[str]:
    """Fields of a stored dataset record that differ from ``spec`` (``path`` and the paths
    of CIF files ignored).

    Parameters
    ----------
    stored
        The content of ``dataset.json`` (see :func:`dataset_record`).
    spec
        The spec to compare with.

    Returns
    -------
    list of str
        e.g. ``["dataset.dose_e_per_angstrom2: stored 400, spec 300"]``, sorted.
    """
    ours = _flatten(spec.model_dump(mode="json", context=IDENTITY), "dataset")
    # a CIF material is its content: where its file was read from is no difference
    theirs = _flatten(
        without_material_paths(current_dataset_keys(stored.get("spec") or {})), "dataset"
    )
    lines = [
        f"{name}: stored {_show(theirs.get(name, _ABSENT))}, spec {_show(ours.get(name, _ABSENT))}"
        for name in sorted(set(ours) | set(theirs))
        if name != "dataset.path" and theirs.get(name, _ABSENT) != ours.get(name, _ABSENT)
    ]
    version = stored.get("generator_version", _ABSENT)
    if version != GENERATOR_VERSION:
        lines.append(f"generator_version: stored {_show(version)}, spec {GENERATOR_VERSION}")
    return lines


#: Spec fields (flattened, see :func:`spec_differences`) that the exit waves depend on
#: (:meth:`~hrtem_ray.spec.dataset.DatasetSpec.waves_payload`): a change refuses the root.
_WAVE_FIELDS = (
    "dataset.structures.",
    "dataset.structure_domains.",
    "dataset.n_structures.train",
    "dataset.n_structures.val",
    "dataset.seed",
    "dataset.structures_per_shard",
    *(f"dataset.simulation.{name}" for name in MULTISLICE_FIELDS),
)


def waves_differences(stored: dict[str, Any], spec: DatasetSpec) -> list[str]:
    """The differences of :func:`spec_differences` that the stored exit waves depend on.

    A structure domain added or removed is no difference of the waves (its group's
    waves are simulated or left); one changed is. The generator version is one.
    """
    lines = []
    for line in spec_differences(stored, spec):
        name = line.split(":", 1)[0]
        both = "<absent>" not in line.split(":", 1)[1]
        wave_field = name == "generator_version" or (
            both
            and any(name == f or (f.endswith(".") and name.startswith(f)) for f in _WAVE_FIELDS)
        )
        if wave_field:
            lines.append(line)
    return lines


def _mismatch_error(root: str, stored: dict[str, Any], spec: DatasetSpec) -> DatasetError:
    diffs = waves_differences(stored, spec) or [
        f"content_hash: stored {stored.get('content_hash')}, spec {spec.content_hash()} "
        "(written by another version of hrtem-ray)"
    ]
    listing = "\n".join(f"  {line}" for line in diffs)
    return DatasetError(
        f"{root} holds a dataset simulated from another spec, with other exit waves (the "
        f"exit-wave store cannot be reused for this spec):\n{listing}\n"
        "only imaging fields (defocus, dose, focal spread, Cs, output sampling, jitter, "
        "mask, calibration, domains) may change; choose another output directory, or "
        "delete that one"
    )


def _reusable(stored: dict[str, Any], spec: DatasetSpec) -> bool:
    """Whether a stored record's exit waves are this spec's (only the imaging differs)."""
    if stored["content_hash"] == spec.content_hash():
        return True
    if waves_differences(stored, spec):
        return False
    try:
        before = stored_spec(stored)
    except ValueError:
        return False
    groups = {g.name for g in spec.groups()} & {g.name for g in before.groups()}
    return all(before.waves_hash(g) == spec.waves_hash(g) for g in groups)


def check_dataset_root(spec: DatasetSpec, root: str | Path) -> None:
    """Check, without writing anything, that ``root`` is empty or holds this spec's dataset.

    Call it before Ray starts; :func:`prepare_root` makes the same check when it
    claims the directory.

    A root whose dataset differs only in the imaging is this spec's: its exit
    waves are reused (see the module docstring).

    Imported domains (:mod:`hrtem_ray.dataset.imported`) carry over an imaging change;
    a spec that changes their tile grid (output pixel size, image size) or simulates a
    domain of an imported domain's name is refused.

    Raises
    ------
    DatasetError
        The root holds a dataset of other exit waves (each differing field named,
        e.g. ``dataset.simulation.n_phonons: stored 2, spec 3``), imported domains that
        ``spec`` would invalidate (each named, with the reason), its ``dataset.json`` is
        unreadable, or the root is a file.
    """
    root = str(root)
    _check_not_a_file(root)
    stored = read_record(root)
    if stored is None:
        return
    if not _reusable(stored, spec):
        raise _mismatch_error(root, stored, spec)
    invalidated = imported.grid_changes(root, spec)
    if invalidated:
        listing = "\n".join(f"  {line}" for line in invalidated)
        raise DatasetError(
            f"{root} holds imported domains (hrtem-ray import) that this spec would "
            f"invalidate:\n{listing}\nimported tiles keep the pixel size and image size they "
            "were cut to, and their names; keep those, or simulate this spec into another "
            "directory and import the micrographs there"
        )


def _check_not_a_file(root: str) -> None:
    import pyarrow.fs as pafs

    loc = storage.resolve(root)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.File:
        raise DatasetError(f"dataset root {loc.uri} is a file, not a directory")


def prepare_root(spec: DatasetSpec, root: str) -> None:
    """Claim a dataset root for ``spec``, or check that it already holds ``spec``'s dataset.

    ``dataset.json`` is created with :func:`hrtem_ray.store.conditional.create_exclusive`: of
    any number of concurrent callers exactly one creates it, and every other one
    compares its spec with the stored one. A stored spec that differs only in the
    imaging is replaced by ``spec`` (compare-and-swap: a concurrent change is refused).

    Raises
    ------
    DatasetError
        As :func:`check_dataset_root`, or the root cannot be written.
    """
    record = dataset_record(spec)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _check_not_a_file(root)
    try:
        if storage.is_local(root):
            storage.makedirs(root)
        if conditional.create_exclusive(storage.join(root, SPEC_FILE), text.encode()):
            return
    except PermissionError as exc:
        raise DatasetError(f"cannot write the dataset root {root}: {exc}") from None
    check_dataset_root(spec, root)
    spec_path = storage.join(root, SPEC_FILE)
    before = storage.read_bytes(spec_path)
    if json.loads(before)["content_hash"] == spec.content_hash():
        return
    if not conditional.replace_if_unchanged(spec_path, text.encode(), before):
        raise DatasetError(f"{spec_path} changed while this spec replaced it; run again")
    logger.info(
        "%s: imaging changed (same exit waves); the spec in %s is replaced", root, SPEC_FILE
    )
