"""Fault tests of imported domains with real ``hrtem-ray`` processes (issue 20, section 1).

Two real imports racing for one domain, ``simulate`` during an import, an added defocus after
an import, SIGINT in the middle of an import and its rerun, a garbled wave shard found by
``check``. The dataset is a copy of the tiny simulated dataset in ``<study>/data``; the
micrographs are 32 uncalibrated NPY files of 512 px (64 tiles each, about 1 MB), built from
its simulated images, so that an import runs a few seconds. A paused process (SIGSTOP) holds
its lock for as long as a test needs, without any change to the code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import CLI, TWO_MODEL_STUDY, run_cli

from hrtem_ray.dataset import manifest, readers
from hrtem_ray.store.lock import LOCK_FILE

pytestmark = pytest.mark.slow

N_FILES = 32


@pytest.fixture
def study(tiny_dataset_root, tmp_path) -> Path:
    """A study directory whose dataset (``data/``) is a private copy of the tiny dataset."""
    root = tmp_path / "study"
    shutil.copytree(tiny_dataset_root, root / "data")
    return root


@pytest.fixture(scope="module")
def micrographs(tiny_dataset_root, tmp_path_factory) -> list[Path]:
    """:data:`N_FILES` NPY micrographs of 512 px at 0.4 Å/px (uncalibrated)."""
    val = readers.read_images(tiny_dataset_root, "0", "val")
    mosaic = np.block([[val.images[0], val.images[1]], [val.images[2], val.images[0]]])
    big = np.tile(mosaic, (4, 4)).astype(np.float32)
    folder = tmp_path_factory.mktemp("micrographs")
    paths = []
    for k in range(N_FILES):
        paths.append(folder / f"m{k:02d}.npy")
        np.save(paths[-1], np.roll(big, 7 * k, axis=1))
    return paths


def _import_args(files, data: Path, domain: str, pixel: float) -> list:
    return ["import", *files, "--data", data, "--domain", domain, "--pixel-size-angstrom", pixel]


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120, step: float = 0.005):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"ended before the condition held: {proc.communicate()}"
        assert time.time() < deadline, "the condition never held"
        time.sleep(step)


def _holds_lock(data: Path, pid: int) -> bool:
    try:
        return json.loads((data / LOCK_FILE).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def _paused_holder(args, data: Path) -> subprocess.Popen:
    """Start ``hrtem-ray ARGS`` and SIGSTOP it once it holds the dataset's lock."""
    proc = _start(args)
    _wait_for(lambda: _holds_lock(data, proc.pid), proc)
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def _finish(proc: subprocess.Popen, resume: bool = False) -> tuple[int, str, str]:
    if resume:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _record(data: Path, domain: str) -> dict:
    return json.loads((data / "_imported" / f"{domain}.json").read_text())


def _spec_file(path: Path, **dataset) -> Path:
    raw = {**TWO_MODEL_STUDY, "dataset": {**TWO_MODEL_STUDY["dataset"], **dataset}}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_imports_racing_for_one_domain_one_wins_the_other_exits_2(study, micrographs):
    """Started together, with other pixel sizes: one exits 0, the other 2 with one error line
    naming the lock's holder or the domain; the domain holds the winner's files only. Then,
    in order: an import while another holds the lock names its pid and command; after it, an
    import of other inputs into its domain names the domain."""
    data = study / "data"
    racers = {px: _start(_import_args(micrographs, data, "exp", px)) for px in (0.4, 0.2)}
    outcomes = {px: _finish(proc) for px, proc in racers.items()}
    assert sorted(code for code, _, _ in outcomes.values()) == [0, 2], outcomes
    winner = next(px for px, (code, _, _) in outcomes.items() if code == 0)
    loser = next(px for px, (code, _, _) in outcomes.items() if code == 2)
    line = _one_error_line(outcomes[loser][2])
    assert "hrtem-ray import --domain exp" in line or "'exp'" in line, line
    record = _record(data, "exp")
    assert record["inputs"]["pixel_size_angstrom"] == winner
    tiles_per_file = 64 if winner == 0.4 else 16  # 512 px at 0.4 A/px, or 256 px
    assert sum(record["tiles"].values()) == N_FILES * tiles_per_file
    assert manifest.verify_shards(data) == []
    assert readers.summarize(data)["exp"] == record["tiles"]

    first = _paused_holder(_import_args(micrographs, data, "exp2", 0.4), data)
    try:
        code, _, err = _finish(_start(_import_args(micrographs, data, "exp2", 0.2)))
        assert code == 2, err
        line = _one_error_line(err)
        assert f"pid {first.pid}" in line and "command 'hrtem-ray import --domain exp2'" in line
    finally:
        code, out, err = _finish(first, resume=True)
    assert code == 0 and f"domain exp2 in {data}: {N_FILES} files" in out, err
    code, _, err = _finish(_start(_import_args(micrographs, data, "exp2", 0.2)))
    assert code == 2 and "already holds an imported domain 'exp2'" in _one_error_line(err)
    assert "pixel_size_angstrom: stored 0.4, this import 0.2" in err
    assert _record(data, "exp2")["inputs"]["pixel_size_angstrom"] == 0.4
    assert manifest.verify_shards(data) == []


def test_simulate_during_an_import_exits_2_and_an_added_defocus_keeps_the_domain(
    study, micrographs, tmp_path
):
    """`simulate` while an import holds the dataset's lock is refused (exit 2, naming the
    import), before Ray starts; after the import, the README's "add a defocus" keeps the
    imported domain (no warning), and `check --spec NEW --repair` quarantines nothing."""
    data = study / "data"
    new_spec = _spec_file(tmp_path / "new.yaml", defocus_nm=[-10, 0, 10, 20])
    importing = _paused_holder(_import_args(micrographs[:4], data, "exp", 0.4), data)
    try:
        refused = run_cli("simulate", new_spec, "--out", data, "--num-cpus", 1)
        assert refused.returncode == 2, refused.stderr[-3000:]
        line = _one_error_line(refused.stderr)
        assert "command 'hrtem-ray import --domain exp'" in line and f"pid {importing.pid}" in line
    finally:
        code, out, err = _finish(importing, resume=True)
    assert code == 0, err
    assert json.loads((data / "dataset.json").read_text())["spec"]["defocus_nm"] == [-10, 0, 10]
    tiles = _record(data, "exp")["tiles"]

    added = run_cli("simulate", new_spec, "--out", data, "--num-cpus", 1)
    log = added.stdout + added.stderr
    assert added.returncode == 0, log[-3000:]
    assert "9 structures from the exit-wave store, 0 simulated" in log
    assert "Warning" not in log and "not of its current dataset" not in log, log[-3000:]
    assert readers.summarize(data)["exp"] == tiles and "20" in readers.summarize(data)
    checked = run_cli("check", study, "--spec", new_spec, "--repair")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no problems found" in checked.stdout and "quarantined" not in checked.stdout
    assert not (study / "quarantine").exists() and not (data / "quarantine").exists()


def test_sigint_mid_import_leaves_an_incomplete_domain_that_the_rerun_completes(study, micrographs):
    """SIGINT once the first files are imported: exit 130 with how many; no domain record,
    so `check` reports the domain incomplete (exit 4) and readers refuse it; the lock is
    released; the same command resumes (only the missing files), then has nothing to do."""
    data = study / "data"
    args = _import_args(micrographs, data, "exp", 0.4)
    proc = _start(args)
    _wait_for(lambda: any((data / "_manifest").glob("imported-exp-*.json")), proc)
    proc.send_signal(signal.SIGINT)
    code, _, err = _finish(proc)
    assert code == 130, err[-3000:]
    match = re.search(r"interrupted: (\d+) of (\d+) files done; rerun the same command", err)
    assert match and int(match[2]) == N_FILES and 1 <= int(match[1]) < N_FILES, err[-3000:]
    done = int(match[1])
    assert len(list((data / "_manifest").glob("imported-exp-*.json"))) == done
    assert not (data / "_imported" / "exp.json").exists() and not (data / LOCK_FILE).exists()
    checked = run_cli("check", study)
    assert checked.returncode == 4, checked.stdout + checked.stderr
    assert f"imported domain 'exp' is incomplete: {done} of {N_FILES} files" in checked.stdout
    with pytest.raises(manifest.DatasetError, match="'exp' is incomplete"):
        readers.read_images(data, "exp", "train")

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"resumed an interrupted import: {N_FILES - done} of {N_FILES} files written now"
        in resumed.stdout
    )
    assert manifest.verify_shards(data) == []
    assert readers.summarize(data)["exp"] == {"train": 24 * 64, "val": 8 * 64}
    assert run_cli("check", study).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


def test_a_garbled_wave_shard_is_reported_by_check_and_rebuilt_by_simulate(study, tmp_path):
    """`check` exits 4 naming a garbled exit-wave shard, `--repair` quarantines it, and the
    next `simulate` (Ray) runs its structures' multislice again: bit-identical."""
    data = study / "data"
    spec = _spec_file(tmp_path / "spec.yaml")
    shard = sorted((data / "waves").glob("*.parquet"))[0]
    intact = shard.read_bytes()
    middle = len(intact) // 2
    garbled = bytes(b ^ 0xFF for b in intact[middle : middle + 64])
    shard.write_bytes(intact[:middle] + garbled + intact[middle + 64 :])
    found = run_cli("check", study)
    assert found.returncode == 4, found.stdout + found.stderr
    assert f"wave: {shard}: sha256 differs from the manifest" in found.stdout
    repaired = run_cli("check", study, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"quarantined {shard}" in repaired.stdout and not shard.exists()
    rebuilt = run_cli("simulate", spec, "--out", data, "--num-cpus", 1)
    log = rebuilt.stdout + rebuilt.stderr
    assert rebuilt.returncode == 0, log[-3000:]
    assert "0 structures from the exit-wave store, 3 simulated" in log  # that shard only
    assert hashlib.sha256(shard.read_bytes()).digest() == hashlib.sha256(intact).digest()
    assert run_cli("check", study).returncode == 0
