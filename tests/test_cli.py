"""Honest outcomes (issue 11): exit codes, interruptions, failed trials, current-spec results.

The slow tests run the real command line in a subprocess, with its own local Ray
cluster, on the tiny dataset; interruptions are real signals, sent to the whole
process group as a terminal's Ctrl-C does (or SIGTERM to the main process only).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers import CLI, REPO, TINY_DATASET, poison_domain, run_cli

from hrtem_ray import cli
from hrtem_ray.dataset.manifest import plan_shards
from hrtem_ray.spec.config import parse_dataset_spec, parse_study_spec
from hrtem_ray.store import storage
from hrtem_ray.study import Study, select_plan_rows
from hrtem_ray.sweep import results
from hrtem_ray.sweep.trials import plan_trials

# 2 pretrain + 8 transfer models, 1 epoch each, no retries.
OUTCOME_STUDY = {
    "name": "outcomes",
    "dataset": TINY_DATASET,
    "domains": {"pretrain": ["-10", "0"], "transfer": ["-10", "0", "10"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none", "encoder"]},
    "training": {"epochs": 1, "batch_size": 4},
    "resources": {"cpu": 1, "max_failures": 0},
}
# 2 pretrain + 2 transfer models.
SMALL = {"domains": {"pretrain": ["-10", "0"], "transfer": ["10"]}, "transfer": {
    "lr": [1e-4], "n_images": [2], "freeze": ["none"]}}  # fmt: skip
INTERRUPTED = re.compile(
    r"interrupted: (\d+) of (\d+) (models|shards) done; rerun the same command to resume"
)
COUNTER = re.compile(r"^\[(\d+)/(\d+)\]", re.MULTILINE)


def write_spec(path: Path, dataset_root: Path | None, **overrides) -> Path:
    """A study spec file of :data:`OUTCOME_STUDY` with ``overrides``, on an existing dataset."""
    raw = {**OUTCOME_STUDY, **overrides}
    if dataset_root is not None:
        raw["dataset"] = {**raw["dataset"], "path": str(dataset_root)}
    path.write_text(yaml.safe_dump(raw))
    return path


def start_cli(*args) -> subprocess.Popen:
    """Start ``hrtem-ray ARGS`` in its own process group (a terminal's foreground job)."""
    return subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def signal_when(proc: subprocess.Popen, condition, send, timeout: float = 300) -> str:
    """Call ``send(proc)`` once ``condition()`` holds; return the command's whole output."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the command ended before it could be interrupted"
        assert time.time() < deadline, "the condition never held"
        time.sleep(0.1)
    send(proc)
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    time.sleep(1.0)  # let the stopped cluster's workers exit
    return output


def assert_counters_within_total(output: str, required: bool = True) -> None:
    """Every ``[done/total]`` progress counter in ``output`` has done <= total."""
    counters = [(int(a), int(b)) for a, b in COUNTER.findall(output)]
    assert counters or not required, output[-3000:]
    assert all(done <= total for done, total in counters), counters


# ----------------------------------------------------------------------------- fast checks
def test_exit_codes_are_documented_in_help_and_readme(capsys):
    codes = {
        cli.EXIT_OK: 0,
        cli.EXIT_BAD_INPUT: 2,
        cli.EXIT_FAILED: 3,
        cli.EXIT_PROBLEMS: 4,
        cli.EXIT_INTERRUPTED: 130,
    }
    assert all(k == v for k, v in codes.items())
    commands = ("simulate", "sweep", "run", "report", "check", "slurm")
    for args in (["--help"], *([c, "--help"] for c in commands)):
        with pytest.raises(SystemExit) as exited:
            cli.main(args)
        assert exited.value.code == 0
        epilog = capsys.readouterr().out.split("exit codes:", 1)[1]
        for code in (0, 1, 2, 3, 4, 130):
            assert re.search(rf"^\s+{code}\s+\w", epilog, re.MULTILINE), (args, code)
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in (0, 1, 2, 3, 4, 130):
        assert f"| {code} |" in section


def test_the_command_prints_the_library_log_lines_on_stderr(capsys):
    """The library logs its progress; the command's one handler prints each message as is."""
    with cli.progress_printed():
        logging.getLogger("hrtem_ray.sweep.run").info("[1/2] done pretrain 0")
        logging.getLogger("hrtem_ray.sweep.check").warning("warning: damaged storage: x")
        logging.getLogger("hrtem_ray.sweep.run").debug("not shown")
    logging.getLogger("hrtem_ray.sweep.run").info("after the command: not printed")
    captured = capsys.readouterr()
    assert captured.err == "[1/2] done pretrain 0\nwarning: damaged storage: x\n"
    assert captured.out == ""


def test_report_refuses_bad_paths_without_creating_anything(tmp_path, capsys):
    out = tmp_path / "report-out"

    def report(path) -> tuple[int, str]:
        code = cli.main(["report", str(path), "-o", str(out)])
        return code, capsys.readouterr().err

    code, err = report(tmp_path / "missing")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty-results").mkdir()
    code, err = report(tmp_path / "empty-results")
    assert code == 2 and "no results yet" in err
    study_root = tmp_path / "study"
    (study_root / "results" / "pretrain").mkdir(parents=True)
    code, err = report(study_root)
    assert code == 2 and "no results yet" in err
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{}")
    code, err = report(dataset)
    assert code == 2 and "is a dataset" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["spec", "dataset", "out_is_a_file"])
def test_bad_input_exits_2_before_ray_starts(tmp_path, capsys, case):
    """Refused with one ``error:`` line; the unreachable ``--address`` proves Ray was not contacted."""
    from hrtem_ray.dataset.claim import prepare_root
    from hrtem_ray.spec.config import parse_dataset_spec

    data = tmp_path / "data"
    out = tmp_path / "out"
    overrides = {}
    if case == "spec":
        overrides["training"] = {"epochs": 0}
    elif case == "dataset":  # the data directory holds another dataset (other structures)
        prepare_root(parse_dataset_spec({**TINY_DATASET, "seed": 8}), str(data))
    else:
        out.write_text("not a directory")
    spec_file = write_spec(tmp_path / "study.yaml", data, **overrides)
    for command in ("sweep", "run"):
        code = cli.main([command, str(spec_file), "--out", str(out), "--address", "127.0.0.1:1"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: ") and "Traceback" not in err, err
        expected = {"spec": "training.epochs", "dataset": "dataset.seed", "out_is_a_file": str(out)}
        assert expected[case] in err


@pytest.mark.slow
def test_simulation_too_large_for_this_machine_exits_2_before_ray_starts(tmp_path):
    """A worker estimated above this machine's memory is refused on a local cluster, before
    Ray starts and before anything is written (409.6 A cell at 0.05 A, 64 phonons: ~100 GiB)."""
    big = {
        **TINY_DATASET,
        "structures": {**TINY_DATASET["structures"], "cell_angstrom": 409.6},
        "simulation": {**TINY_DATASET["simulation"], "sampling_angstrom": 0.05, "n_phonons": 64},
    }
    spec_file = write_spec(tmp_path / "study.yaml", None, dataset=big)
    out, data, temp = tmp_path / "out", tmp_path / "data", tmp_path / "tmp"
    temp.mkdir()
    # Ray keeps its session folders under $TMPDIR/ray: it must never appear
    env = {**os.environ, "TMPDIR": str(temp), "RAY_TMPDIR": str(temp)}
    for args in (["simulate", spec_file, "--out", data], ["run", spec_file, "--out", out]):
        proc = subprocess.run(
            [*CLI, *map(str, args)], capture_output=True, text=True, timeout=120, env=env
        )
        err = proc.stderr
        assert proc.returncode == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert "more than this machine's" in err and "dataset.simulation.n_phonons 64" in err
        assert not (temp / "ray").exists()
    assert not out.exists() and not data.exists()


def test_select_plan_rows_keeps_only_the_plans_models():
    spec = parse_study_spec({**OUTCOME_STUDY, **SMALL})
    other = parse_study_spec({**OUTCOME_STUDY, **SMALL, "training": {"epochs": 2}})
    plan, old = plan_trials(spec), plan_trials(other)
    rows = [
        {"model_id": t.model_id, "config_hash": t.config_hash, "eval_domain": d}
        for t in [*plan.all(), *old.all()]
        for d in ("-10", "0", "10")
    ]
    # same model id, another configuration hash: not the plan's model
    stale = plan.pretrain[0]
    rows.append({"model_id": stale.model_id, "config_hash": "0" * 16, "eval_domain": "0"})
    selection = select_plan_rows(pl.DataFrame(rows), plan)
    assert set(selection.table["model_id"]) == {t.model_id for t in plan.all()}
    assert selection.table.height == 4 * 3
    assert (selection.other_rows, selection.other_models) == (13, 5)
    assert selection.note() == (
        "ignored 13 rows of 5 models from other configurations in results/ "
        "(--all-results to include them)"
    )
    assert select_plan_rows(pl.DataFrame(rows), plan, all_results=True).table.height == 25


# ----------------------------------------------------------------------------- real runs
@pytest.mark.slow
def test_ctrl_c_exits_130_without_a_report_and_the_rerun_completes(tiny_dataset_root, tmp_path):
    spec_file = write_spec(tmp_path / "study.yaml", tiny_dataset_root)
    out = tmp_path / "out"
    args = ["run", spec_file, "--out", out, "--num-cpus", 2]
    plan_ids = {t.model_id for t in Study.from_yaml(spec_file, out=out).plan.all()}

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group
    output = signal_when(
        start_cli(*args),
        lambda: bool(results.finished_ids(str(out))),
        lambda proc: os.killpg(proc.pid, signal.SIGINT),
    )
    match = INTERRUPTED.search(output)
    assert match, output[-3000:]
    done = len(results.finished_ids(str(out)) & plan_ids)
    assert (int(match[1]), int(match[2]), match[3]) == (done, 10, "models")
    assert 1 <= done < 10
    assert "Tuner.restore" not in output and "sweep finished" not in output
    assert not (out / "report").exists(), "an interrupted run must not write a report"
    assert_counters_within_total(output, required=False)

    resumed = run_cli(*args)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert f"({done} already done)" in log and "Tuner.restore" not in log
    assert_counters_within_total(log)
    table = Study.from_yaml(spec_file, out=out).results()
    assert table.height == 10 * 3 and set(table["model_id"]) == plan_ids
    page = (out / "report" / "report.html").read_text()
    assert "partial:" not in page


@pytest.mark.slow
def test_sigterm_stops_simulate_with_130_and_the_rerun_completes(tmp_path):
    dataset = {**TINY_DATASET, "n_structures": {"train": 9, "val": 3}}
    spec_file = write_spec(tmp_path / "study.yaml", None, dataset=dataset)
    data = tmp_path / "data"
    manifests = data / "_manifest"

    def some_shard_done() -> bool:
        return manifests.is_dir() and any(manifests.glob("*.json"))

    output = signal_when(
        start_cli("simulate", spec_file, "--out", data, "--num-cpus", 2),
        some_shard_done,
        lambda proc: os.kill(proc.pid, signal.SIGTERM),  # the main process only
    )
    match = INTERRUPTED.search(output)
    assert match, output[-3000:]
    planned = len(plan_shards(parse_dataset_spec(dataset)))
    assert match[3] == "shards" and int(match[2]) == planned and 1 <= int(match[1]) < planned, (
        match[0]
    )
    assert "Traceback" not in output

    resumed = run_cli("simulate", spec_file, "--out", data, "--num-cpus", 2)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert len(list(manifests.glob("*.json"))) == planned


@pytest.mark.slow
def test_failed_trials_exit_3_with_the_failure_table_and_a_partial_report(
    tiny_dataset_root, tmp_path
):
    data = poison_domain(tiny_dataset_root, tmp_path / "poisoned", "0")
    spec_file = write_spec(tmp_path / "study.yaml", data, **SMALL)
    out = tmp_path / "out"
    proc = run_cli("run", spec_file, "--out", out, "--num-cpus", 2)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 3, log[-3000:]
    assert "2 failed trials" in log and "not run: parent" in log
    assert "partial: 2 of 4 models, 2 failed" in log
    page = (out / "report" / "report.html").read_text()
    top = page.split('class="meta"', 1)[0]
    assert "partial: 2 of 4 models, 2 failed" in top


@pytest.mark.slow
def test_results_and_report_follow_the_current_spec(
    ray_cluster, tiny_dataset_root, tmp_path, caplog
):
    out = tmp_path / "study"
    raw = {**OUTCOME_STUDY, **SMALL, "dataset": {**TINY_DATASET, "path": str(tiny_dataset_root)}}
    first = Study(parse_study_spec(raw), out=out)
    assert first.sweep().finished
    edited = Study(parse_study_spec({**raw, "training": {"epochs": 2, "batch_size": 4}}), out=out)
    caplog.set_level(logging.INFO, logger="hrtem_ray")
    report = edited.sweep()
    assert report.finished and report.already_done == 0 and report.completed == 4
    assert_counters_within_total("\n".join(caplog.messages))

    table = edited.results()
    assert set(table["model_id"]) == {t.model_id for t in edited.plan.all()}
    assert table.height == 4 * 3 and set(table["epochs"]) == {2}
    note = edited.result_selection().note()
    assert note == (
        "ignored 12 rows of 4 models from other configurations in results/ "
        "(--all-results to include them)"
    )
    assert edited.results(all_results=True).height == 24
    stored = storage.read_json(str(out / "study.json"))
    assert stored["spec"]["training"]["epochs"] == 2

    # the report of the study directory: current spec only, with the note on top
    for target in (out, out / "results"):
        report_dir = tmp_path / f"report-{target.name}"
        proc = run_cli("report", target, "-o", report_dir, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert note in proc.stderr
        page = (report_dir / "report.html").read_text()
        assert note in page.split('class="meta"', 1)[0]
        pairs = pl.read_csv(report_dir / "tables" / "defocus_pair_matrix.csv")
        assert pairs["n_models"].max() == 1
    every = tmp_path / "report-all"
    proc = run_cli("report", out, "-o", every, "--all-results", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pl.read_csv(every / "tables" / "defocus_pair_matrix.csv")["n_models"].max() == 2


@pytest.mark.parametrize(("module_name", "class_name"), cli.BAD_INPUT_ERRORS)
def test_every_bad_input_error_class_exists(module_name, class_name):
    """The exit-2 classes are named by module; a moved class must fail here, not exit 1."""
    import importlib

    error = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(error, Exception)
    assert cli.is_bad_input(error("x")) and not cli.is_bad_input(RuntimeError("x"))
