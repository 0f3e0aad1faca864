"""The report's axis display words: every study axis has a name and a unit."""

from __future__ import annotations

from hrtem_ray.report.axes import AXIS_NAMES, AXIS_UNITS, axis_label
from hrtem_ray.spec.dataset import StudyAxis


def test_every_study_axis_has_a_label_with_its_unit():
    assert axis_label("cs_mm") == "spherical aberration Cs (mm)"
    assert axis_label("focal_spread_angstrom") == "focal spread (Å)"
    assert axis_label("structure") == "structure"
    assert set(AXIS_UNITS) == set(AXIS_NAMES) == set(StudyAxis.__args__)
