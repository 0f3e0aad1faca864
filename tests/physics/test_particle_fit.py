"""Particle counts: a count that can never fit is refused, a structure that placed fewer warns.

``structures.n_particles: [50, 60]`` in a 25.6 Å cell used to place 1 or 2 particles per
structure without a word. The bound of :func:`max_particles_fit` (Oler's inequality) is
checked against constructive packings; the shortfall of random placement is counted per
simulated structure and reported by the simulation.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import tiny_dataset_spec
from pydantic import ValidationError

from hrtem_ray.dataset import manifest, pipeline
from hrtem_ray.physics.structures import random_structure
from hrtem_ray.spec.types import StructureParams, max_particles_fit

#: The tiny dataset's cell and particles, as in the issue: 25.6 Å, radius 5-7 Å, 4 Å apart.
CROWDED = {
    "cell_angstrom": 25.6,
    "substrate_thickness_angstrom": (6.0, 6.0),
    "radius_angstrom": (5.0, 7.0),
    "min_separation_angstrom": 4.0,
}


def square_packing(cell: float, radius: float, separation: float) -> int:
    """Particles of one radius on a square grid of pitch 2 radius + separation: a packing
    that exists, so the bound can never be below it."""
    per_side = math.floor((cell - 2 * radius) / (2 * radius + separation)) + 1
    return per_side**2


@pytest.mark.parametrize(
    ("cell", "radius", "separation"),
    [(25.6, 5.0, 4.0), (51.2, 8.0, 10.0), (128.0, 15.0, 10.0), (128.0, 5.0, 1.0), (20.0, 9.9, 0)],
)
def test_the_bound_is_never_below_a_packing_that_exists(cell, radius, separation):
    assert max_particles_fit(cell, radius, separation) >= square_packing(cell, radius, separation)


def test_the_bound_grows_with_the_cell_and_shrinks_with_radius_and_separation():
    base = max_particles_fit(64.0, 5.0, 4.0)
    assert max_particles_fit(128.0, 5.0, 4.0) > base
    assert max_particles_fit(64.0, 8.0, 4.0) < base
    assert max_particles_fit(64.0, 5.0, 10.0) < base
    # the tiny dataset's cell: a 2 x 2 grid of 5 A particles 4 A apart is all that fits
    assert max_particles_fit(25.6, 5.0, 4.0) == 4


def test_a_count_that_can_never_fit_is_refused_while_the_spec_is_read():
    with pytest.raises(ValidationError, match=r"n_particles \[50, 60\] can never fit: at most 4"):
        StructureParams(**CROWDED, n_particles=(50, 60))
    # the top of a range counts too: draws of 5 or 6 could never be placed
    with pytest.raises(ValidationError, match=r"allowed: n_particles up to 4"):
        StructureParams(**CROWDED, n_particles=(1, 6))
    StructureParams(**CROWDED, n_particles=(1, 4))


def test_a_stored_spec_with_such_a_count_still_reads():
    """study.json and dataset.json written before the refusal existed stay readable (report,
    check, resume), while a spec file with the same count is refused."""
    from hrtem_ray.dataset.manifest import stored_spec
    from hrtem_ray.spec.base import SpecError
    from hrtem_ray.spec.config import parse_stored_study_spec, parse_study_spec

    dataset = {"defocus_nm": [0], "structures": {**CROWDED, "n_particles": [1, 6]}}
    raw = {"name": "old", "dataset": dataset, "pretrain": {"n_images": [8]}, "transfer": None}
    assert parse_stored_study_spec(raw).dataset.structures.n_particles == (1, 6)
    assert stored_spec({"spec": raw["dataset"]}).structures.n_particles == (1, 6)
    with pytest.raises(SpecError, match="can never fit"):
        parse_study_spec(raw)


def test_random_placement_reports_the_particles_it_could_not_place():
    """At the bound random placement mostly falls short; every structure says so exactly."""
    params = StructureParams(**{**CROWDED, "radius_angstrom": (5.0, 5.0)}, n_particles=(4, 4))
    structures = [random_structure(params, seed) for seed in range(12)]
    assert all(s.n_particles_drawn == 4 for s in structures)
    assert all(s.n_particles == len(s.particle_radii_angstrom) <= 4 for s in structures)
    assert any(s.n_particles < s.n_particles_drawn for s in structures)
    roomy = StructureParams(cell_angstrom=128.0, radius_angstrom=(5.0, 5.0), n_particles=(2, 2))
    assert random_structure(roomy, 0).n_particles == random_structure(roomy, 0).n_particles_drawn


def _short_seed(spec) -> int:
    """A dataset seed whose first training structure places fewer particles than drawn."""
    for seed in range(200):
        index_seed = pipeline.structure_seed(seed, "all", "train", 0)
        structure = random_structure(spec.structures, index_seed)
        if structure.n_particles < structure.n_particles_drawn:
            return seed
    raise AssertionError("no crowded structure in 200 seeds")


@pytest.mark.slow
def test_the_simulation_counts_and_warns_about_structures_that_placed_fewer(tmp_path, caplog):
    """One real structure (abTEM, one phonon, one domain) that placed fewer than drawn."""
    crowded = {**CROWDED, "radius_angstrom": [5, 5], "n_particles": [4, 4]}
    spec = tiny_dataset_spec(
        structures=crowded,
        defocus_nm=[0, 10],
        n_structures={"train": 1, "val": 1},
        structures_per_shard=1,
    )
    spec = tiny_dataset_spec(
        structures=crowded,
        defocus_nm=[0, 10],
        n_structures={"train": 1, "val": 1},
        structures_per_shard=1,
        seed=_short_seed(spec),
    )
    units = pipeline.simulation_units(spec, manifest.plan_shards(spec))
    record = pipeline.simulate_and_write(spec, str(tmp_path), units[0])
    assert record["structures_short"] == 1 and record["particles_drawn"] == 4
    assert record["particles_placed"] < 4
    task = units[0].shards[0].task
    path = manifest.shard_path(str(tmp_path), spec.axis, task.domain, task.split, task.key)
    assert pq.read_table(path).column("n_particles").to_pylist() == [record["particles_placed"]]
    summary = pipeline.SimulationSummary(
        str(tmp_path), 2, 2, 2, 1.0, 0, 1, record["particles_drawn"], record["particles_placed"], 1
    )
    with caplog.at_level(logging.WARNING, logger="hrtem_ray"):
        pipeline._log_sources(summary, spec)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("dataset.structures.n_particles [4, 4]: 1 of 1 structures")
    assert f"({record['particles_placed']} of 4 particles placed)" in warning
    assert "max_placement_attempts (200)" in warning


def test_a_small_shortfall_is_said_at_info_not_as_a_warning(caplog):
    """2 of 100 drawn particles left out (a crowded cell's random placement): an INFO line
    with the numbers; 6 of 100 (over PLACEMENT_SHORT_SHARE): a warning."""
    spec = tiny_dataset_spec()
    for placed, level in ((98, logging.INFO), (94, logging.WARNING)):
        summary = pipeline.SimulationSummary("x", 6, 2, 2, 1.0, 0, 60, 100, placed, 2)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hrtem_ray"):
            pipeline._log_sources(summary, spec)
        (line,) = [r for r in caplog.records if "fewer particles than drawn" in r.getMessage()]
        assert line.levelno == level and f"({placed} of 100 particles placed)" in line.getMessage()


def test_no_warning_when_every_particle_was_placed():
    summary = pipeline.SimulationSummary("x", 6, 2, 2, 1.0, 0, 3, 5, 5, 0)
    assert summary.placement_warning(tiny_dataset_spec()) is None
    assert np.isfinite(summary.images_per_second)
