"""The ``adaptive:`` section of a study spec, and the keys of the findings it may target.

An adaptive study (``hrtem-ray run SPEC --until-decided``, or a spec with ``adaptive:``)
trains its grid's configurations in rounds of seeds and stops once the findings it
targets are decided or its budget is spent (:mod:`hrtem_ray.sweep.adaptive`). This
module holds the section's fields and their own checks; whether each targeted finding
applies to the spec's axis and grids is checked by
:meth:`hrtem_ray.spec.study.StudySpec.finding_requirements`.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from hrtem_ray.spec.base import SpecModel

#: The reference study's findings, in order (``hrtem_ray.analysis.findings``).
FINDING_KEYS: tuple[str, ...] = ("1", "2a", "2b", "2c", "3", "4", "5a", "5b", "5c")
#: The in-focus domain of a defocus study, the subject of findings 2a, 2b and 2c.
IN_FOCUS = "0"


class AdaptiveSpec(SpecModel):
    """Train seeds in rounds until the targeted findings are decided or the budget is spent.

    Attributes
    ----------
    findings
        Finding keys to decide (:data:`FINDING_KEYS`); ``None`` (default): every finding
        that applies to the spec's axis and grids.
    max_models
        Budget in trainings (models); at least the first round's.
    max_cpu_hours, max_gpu_hours
        Budgets in CPU or GPU hours: measured ``train_seconds`` of the study's models
        times ``resources.cpu`` (``resources.gpu``) per trial; later rounds are
        projected from the measured times of earlier ones. Without any budget:
        ``max_models`` is the spec's fixed grid, or twice the first round if that is more.
    replicate_batch
        Seeds added to a configuration when a round adds replicates to it.
    first_seeds
        Seeds of every needed configuration in the first round (at least 2: a
        configuration with one model has no replicates and decides nothing).
    level
        Confidence level of the whole sequence of looks (family-wise over the rounds):
        every look decides at Pocock's nominal level for ``max_rounds`` looks
        (:class:`hrtem_ray.analysis.sequential.Schedule`; 98.6% for 6 looks at 95%).
    max_rounds
        Most rounds (looks), fixed in advance: fewer looks decide each at a laxer level.
    n_boot
        Bootstrap replicates of each look.
    """

    findings: list[str] | None = None
    max_models: int | None = Field(default=None, ge=1)
    max_cpu_hours: float | None = Field(default=None, gt=0)
    max_gpu_hours: float | None = Field(default=None, gt=0)
    replicate_batch: int = Field(default=2, ge=1)
    first_seeds: int = Field(default=2, ge=2)
    level: float = Field(default=0.95, gt=0, lt=1)
    max_rounds: int = Field(default=6, ge=1, le=20)
    n_boot: int = Field(default=1000, ge=200)

    @field_validator("findings")
    @classmethod
    def _known_findings(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError(
                "needs at least one finding key (omit the field for every finding that applies)"
            )
        unknown = [k for k in value if k not in FINDING_KEYS]
        if unknown:
            raise ValueError(f"unknown finding keys {unknown}; allowed: {', '.join(FINDING_KEYS)}")
        repeated = sorted({k for k in value if value.count(k) > 1})
        if repeated:
            raise ValueError(f"finding keys {repeated} repeat")
        return value

    @model_validator(mode="after")
    def _one_budget_kind_each(self) -> AdaptiveSpec:
        if self.max_gpu_hours is not None and self.max_cpu_hours is not None:
            raise ValueError(
                "adaptive.max_cpu_hours and adaptive.max_gpu_hours exclude each other: give "
                "the hours of the device the trials train on (resources.gpu > 0: GPU hours)"
            )
        return self
