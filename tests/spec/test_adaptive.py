"""The ``adaptive:`` spec section: refused while the spec is read (exit 2, the field named),
the first round and budget of ``--dry-run``, and a fixed grid left as it was."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers import TINY_DATASET

from hrtem_ray import cli
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import load_study_spec, parse_study_spec
from hrtem_ray.study import Study
from hrtem_ray.sweep.trials import plan_trials

#: A defocus study on the tiny dataset where every finding but 5a applies.
STUDY = {
    "name": "adaptive-tiny",
    "dataset": copy.deepcopy(TINY_DATASET),
    "domains": {"pretrain": ["-10", "0"], "transfer": ["-10", "0", "10"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0, 1, 2]},
    "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none", "encoder"]},
    "baseline": {"mixtures": [[2, 2]], "lr": [1e-3], "seeds": [0, 1, 2]},
    "training": {"epochs": 1, "batch_size": 4},
    "adaptive": {},
}


def _spec(tmp_path, name="study", **adaptive):
    raw = {**copy.deepcopy(STUDY), "adaptive": adaptive}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _refused(raw: dict) -> str:
    with pytest.raises(SpecError) as error:
        Study(parse_study_spec(raw, source="tests"))
    return str(error.value)


@pytest.mark.parametrize(
    ("adaptive", "field", "words"),
    [
        ({"findings": ["9"]}, "adaptive.findings", "allowed: 1, 2a, 2b, 2c, 3, 4, 5a, 5b, 5c"),
        ({"findings": ["5a"]}, "adaptive.findings", "transfer.freeze with decoder and none"),
        ({"findings": []}, "adaptive.findings", "at least one finding"),
        ({"replicate_batch": 0}, "adaptive.replicate_batch", "greater than or equal to 1"),
        ({"first_seeds": 1}, "adaptive.first_seeds", "greater than or equal to 2"),
        ({"level": 1.5}, "adaptive.level", "less than 1"),
        ({"max_models": 5}, "adaptive.max_models", "below the first round's"),
    ],
)
def test_bad_adaptive_sections_are_refused_naming_the_field(adaptive, field, words):
    message = _refused({**copy.deepcopy(STUDY), "adaptive": adaptive})
    assert field in message and words in message, message


def test_findings_that_do_not_apply_to_the_axis_or_grids_are_named():
    dose = {**copy.deepcopy(STUDY), "adaptive": {"findings": ["2a"]}}
    dose["dataset"] = {**TINY_DATASET, "axis": "dose", "defocus_nm": -10,
                       "dose_e_per_angstrom2": [100, 400, 1000]}  # fmt: skip
    dose["domains"] = {"pretrain": ["100", "400"], "transfer": ["100", "400", "1000"]}
    message = _refused(dose)
    assert "adaptive.findings: finding 2a does not apply" in message, message
    assert "not a defocus study" in message and "applicable here: 1, 3, 5b, 5c" in message
    no_mixtures = {**copy.deepcopy(STUDY), "baseline": None, "adaptive": {"findings": ["3"]}}
    assert "needs a baseline grid" in _refused(no_mixtures)


def test_shared_parents_that_delete_their_checkpoints_are_refused():
    raw = copy.deepcopy(STUDY)
    raw["transfer"]["delete_parent_checkpoints"] = True
    assert "transfer.delete_parent_checkpoints" in _refused(raw)


def test_bad_input_exits_2_with_one_error_line_before_ray_starts(tmp_path, capsys):
    """The unreachable ``--address`` proves Ray was not contacted."""
    cases = [
        (_spec(tmp_path, "key", findings=["2x"]), [], "adaptive.findings"),
        (_spec(tmp_path, "batch", replicate_batch=0), [], "adaptive.replicate_batch"),
        (_spec(tmp_path, "budget", max_models=3), [], "adaptive.max_models"),
        (_spec(tmp_path, "all"), ["--all-results"], "--all-results"),
    ]
    for spec, extra, field in cases:
        for command in ("sweep", "run"):
            if "--all-results" in extra and command == "sweep":
                continue
            args = [command, str(spec), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:1"]
            code = cli.main([*args, *extra])
            err = capsys.readouterr().err
            assert code == 2, err
            assert err.startswith("error: ") and "Traceback" not in err and field in err, err
    assert not (tmp_path / "out").exists()


def test_until_decided_with_all_results_is_refused(tmp_path, capsys):
    raw = {k: v for k, v in copy.deepcopy(STUDY).items() if k != "adaptive"}
    spec = tmp_path / "fixed.yaml"
    spec.write_text(yaml.safe_dump(raw))
    args = ["run", str(spec), "--out", str(tmp_path / "out"), "--until-decided", "--all-results"]
    assert cli.main(args) == 2
    assert "--all-results: not with an adaptive study" in capsys.readouterr().err


def test_dry_run_prints_the_first_round_and_the_budget(tmp_path, capsys):
    spec = _spec(tmp_path, max_models=40, findings=["2a", "2b", "3"])
    assert cli.main(["run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    first, *rest = out.splitlines()
    # 2a, 2b: both pretrain configurations, 2 seeds each (the parents of the transfer
    # models too); 3: per pair with a mixture (-10:0, -10:10, 0:10), its unfrozen transfer
    # and its mixture at 2 target images
    assert first == (
        "study adaptive-tiny (defocus): 4 pretrain, 6 transfer, 6 baseline, 16 models in "
        "round 1 of an adaptive study"
    ), out
    assert "budget: max_models 40; round 1 uses 16 trainings (the fixed grid: 39)" in out
    assert "decides findings 2a, 2b, 3 at level 0.95" in out


def test_until_decided_gives_a_fixed_spec_the_default_section(tmp_path, capsys):
    raw = {k: v for k, v in copy.deepcopy(STUDY).items() if k != "adaptive"}
    spec = tmp_path / "fixed.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(spec), "--until-decided", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # every finding that applies (4 needs two eval domains besides 0 nm and the pair's:
    # the tiny dataset has 3 in all); default budget: the fixed grid, or twice round 1
    assert "decides findings 1, 2a, 2b, 2c, 3, 5b, 5c at level 0.95" in out
    assert "budget: max_models 52; round 1 uses 26 trainings (the fixed grid: 39)" in out
    assert cli.main(["run", str(spec), "--dry-run"]) == 0  # without it: the fixed grid
    assert capsys.readouterr().out.splitlines()[0].endswith("39 models in all")


def test_a_spec_without_adaptive_plans_exactly_as_before():
    """``adaptive`` is not part of any model id: the laptop preset's 133 models keep theirs."""
    spec = load_study_spec("sweeps/laptop.yaml")
    assert spec.adaptive is None
    adaptive = parse_study_spec({**spec.model_dump(mode="json"), "adaptive": {}}, source="t")
    fixed = sorted(t.model_id for t in plan_trials(spec).all())
    assert len(fixed) == 133
    assert fixed == sorted(t.model_id for t in plan_trials(adaptive).all())
