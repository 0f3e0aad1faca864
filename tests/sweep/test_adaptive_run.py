"""An adaptive study end to end on Ray: its rounds stored, a SIGKILLed driver resumed to the
same decisions, and its report with the rounds' chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import TINY_DATASET, kill_cli_when, run_cli

from hrtem_ray.sweep import results

#: Findings 2a and 2b on the tiny dataset (pretrained on -10 and 0 nm, 10 nm unseen):
#: 2 pretrain configurations, 4 models in round 1, 2 more per configuration a round.
ADAPTIVE_TINY = {
    "name": "adaptive-kill",
    "domains": {"pretrain": ["-10", "0"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": None,
    "training": {"epochs": 1, "batch_size": 4},
    "resources": {"cpu": 1, "max_failures": 0},
    "adaptive": {"findings": ["2a", "2b"], "max_models": 12, "max_rounds": 3, "n_boot": 200},
}
#: What must be the same after a resume, per round.
SAME = ("round", "allocation", "trainings", "decided", "open", "futile", "added", "stop",
        "results_digest")  # fmt: skip


def _rounds(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "adaptive").glob("round-*.json"))]


@pytest.mark.slow
def test_a_killed_adaptive_study_resumes_to_the_same_decisions(tiny_dataset_root, tmp_path):
    spec = tmp_path / "adaptive.yaml"
    spec.write_text(
        yaml.safe_dump(
            {**ADAPTIVE_TINY, "dataset": {**TINY_DATASET, "path": str(tiny_dataset_root)}}
        )
    )
    whole_out, killed_out = tmp_path / "whole", tmp_path / "killed"
    whole = run_cli("run", spec, "--out", whole_out, "--num-cpus", 2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = _rounds(whole_out)
    assert len(reference) >= 2, "the study should take more than one round"
    assert "round 1: " in whole.stderr and "adaptive study stopped after round" in whole.stderr
    assert list((whole_out / "report" / "figures").glob("*_adaptive_rounds.png"))

    # killed in round 2, as soon as round 1 is stored: its 2 new models train together and
    # finish together, so waiting for one of them raced the round-2 look on a busy machine
    args = ["sweep", spec, "--out", killed_out, "--num-cpus", 2]
    first = killed_out / "adaptive" / "round-001.json"
    kill_cli_when(args, first.exists)
    assert len(results.finished_ids(str(killed_out))) >= 4  # round 1's models, kept
    at_kill = _rounds(killed_out)
    assert 1 <= len(at_kill) < len(reference)
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _rounds(killed_out)
    assert [{k: r[k] for k in SAME} for r in again] == [{k: r[k] for k in SAME} for r in reference]
    assert at_kill == again[: len(at_kill)]  # stored rounds are never rewritten
