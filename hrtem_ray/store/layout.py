"""The on-disk layout of a study root: every file and directory name a study writes.

A study root holds ``study.json`` (the spec it ran), ``results/``, ``history/``,
``checkpoints/``, ``failures/``, ``quarantine/``, for an adaptive study ``adaptive/`` (its
rounds) and, by default, its dataset in ``data/``.
"""

from __future__ import annotations

from hrtem_ray.store import storage

STUDY_FILE = "study.json"
RESULTS_DIR = "results"
HISTORY_DIR = "history"
CHECKPOINT_DIR = "checkpoints"
FAILURES_DIR = "failures"
QUARANTINE_DIR = "quarantine"
DATA_DIR = "data"
#: An adaptive study's round records (``round-NNN.json``, :mod:`hrtem_ray.sweep.rounds`).
ADAPTIVE_DIR = "adaptive"
QUARANTINE_NOTE_SUFFIX = ".quarantine.json"


def is_study_root(root: str) -> bool:
    """Whether ``root`` holds anything a study writes (its spec, results, histories,
    checkpoints or dataset): the one test of "is this a study directory", used by ``check``,
    ``report`` and the ``Study`` API."""
    names = (STUDY_FILE, RESULTS_DIR, HISTORY_DIR, CHECKPOINT_DIR, DATA_DIR)
    return any(storage.exists(storage.join(root, name)) for name in names)
