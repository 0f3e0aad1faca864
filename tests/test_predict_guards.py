"""hrtem-ray predict refuses what it cannot do before any work, and never hides a skipped model.

* ``-o`` an existing file, or a path under one: exit 2, one ``error:`` line, the file intact;
* a micrograph whose prediction needs more memory than the limit (``--max-memory``, default
  the memory available): refused with the resampled size and the estimate;
* TIFF and NPY headers declaring more pixels than memory holds: refused before reading;
* ``best:DOMAIN`` whose best model's checkpoint is truncated or garbled: the next model is
  used with a WARNING naming the skipped model and why.

Two real models (plain torch, one epoch each, :func:`helpers.train_study_root`) are trained
on the tiny simulated dataset for the study root.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
from helpers import TWO_MODEL_STUDY, train_study_root

from hrtem_ray import cli
from hrtem_ray.dataset.micrograph_files import MicrographError, check_image_size, read_micrograph
from hrtem_ray.exit_codes import EXIT_BAD_INPUT
from hrtem_ray.inference import choose_model, study_geometry
from hrtem_ray.predict_budget import (
    PREDICT_BASE_BYTES,
    ModelGeometry,
    PredictError,
    check_predict_memory,
    estimate_predict_memory_bytes,
)
from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.sweep import results
from hrtem_ray.sweep.run import write_study_spec

MODEL_ANGSTROM = 0.4  # the tiny dataset's pixel size
#: The tiny dataset's models: 0.4 A/px, 64 px tiles, the small U-Net.
GEOMETRY = ModelGeometry(MODEL_ANGSTROM, 64, "small")

#: Two pretrain models on domain "0" (seeds 0 and 1), one epoch, evaluated on "0".
TWO_SEEDS = {
    **TWO_MODEL_STUDY,
    "domains": {"pretrain": ["0"], "eval": ["0"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0, 1]},
    "transfer": None,
    "training": {"epochs": 1, "batch_size": 4},
}


@pytest.fixture(scope="module")
def two_model_root(tiny_dataset_root, tmp_path_factory) -> Path:
    """A study root with two pretrained models, their results and checkpoints, study.json."""
    root = tmp_path_factory.mktemp("two-model-study")
    train_study_root(TWO_SEEDS, tiny_dataset_root, root)
    raw = {**TWO_SEEDS, "dataset": {**TWO_SEEDS["dataset"], "path": str(tiny_dataset_root)}}
    write_study_spec(str(root), parse_study_spec(raw, source="tests"), str(tiny_dataset_root))
    return root


@pytest.fixture
def study_copy(two_model_root, tmp_path) -> Path:
    """A copy of the two-model study root that a test may damage."""
    return Path(shutil.copytree(two_model_root, tmp_path / "study"))


def _ranked(root: Path) -> list[str]:
    """Model ids by their loss on domain "0", best first."""
    table = results.read_results(str(root)).filter(pl.col("eval_domain") == "0").sort("loss")
    return table.get_column("model_id").to_list()


def _micrograph(path: Path, side: int = 64) -> Path:
    np.save(path, np.random.default_rng(0).normal(size=(side, side)).astype(np.float32))
    return path


def _run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ damaged best model


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_a_damaged_best_checkpoint_is_skipped_with_a_warning_naming_it(study_copy, caplog, damage):
    best, runner_up = _ranked(study_copy)
    weights = study_copy / "checkpoints" / best / "model.pt"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:  # same size, different bytes: only its digest tells
        data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
        weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hrtem_ray"):
        choice = choose_model(str(study_copy), "best:0")
    assert choice.model_id == runner_up
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"best:0: skipped {best} (pretrain, loss ")
    assert "is damaged" in warning and "--deep --repair" in warning
    assert f"skipped {best}" in choice.reason
    with pytest.raises(PredictError, match=rf"--model {best}: no usable checkpoint .*damaged"):
        choose_model(str(study_copy), best)


def test_an_intact_study_picks_its_best_model_without_a_warning(two_model_root, caplog):
    with caplog.at_level(logging.WARNING, logger="hrtem_ray"):
        choice = choose_model(str(two_model_root), "best:0")
    assert choice.model_id == _ranked(two_model_root)[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ output path


def test_an_output_path_that_is_a_file_or_under_one_exits_2(two_model_root, tmp_path, capsys):
    image = _micrograph(tmp_path / "m.npy")
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    for out in (existing, existing / "sub"):
        code, err = _run_cli(
            capsys, "predict", "--study", two_model_root, "--model", "best:0", image,
            "--pixel-size-angstrom", MODEL_ANGSTROM, "-o", out,
        )  # fmt: skip
        assert code == EXIT_BAD_INPUT
        assert err.count("error:") == 1 and "Traceback" not in err
        assert f"-o {out}:" in err and "not a directory" in err
    assert existing.read_text() == "keep me"


# ------------------------------------------------------------------ memory


def test_the_estimate_grows_with_the_resampled_size_the_tiles_and_the_model(two_model_root):
    assert study_geometry(str(two_model_root)) == GEOMETRY
    fixed = estimate_predict_memory_bytes([(1, 1)], [0.4], GEOMETRY)
    same = estimate_predict_memory_bytes([(1024, 1024)], [0.4], GEOMETRY) - fixed
    five = estimate_predict_memory_bytes([(1024, 1024)], [2.0], GEOMETRY) - fixed
    assert five > 10 * same  # 25 times the pixels on the model's grid
    # the issue's micrograph: 4096 px at 2.0 A/px is 20,480 px at 0.4 A/px
    issue = estimate_predict_memory_bytes([(4096, 4096)], [2.0], GEOMETRY)
    assert 12 * 2**30 < issue < 16 * 2**30
    two = estimate_predict_memory_bytes([(1024, 1024)] * 2, [0.4, 0.4], GEOMETRY) - fixed
    assert same < two < 2 * same  # files are segmented one at a time, their results kept
    # the paper's full U-Net on 640 px tiles: a batch of 32 alone needs gigabytes
    paper = ModelGeometry(0.2, 640, "full")
    assert estimate_predict_memory_bytes([(1, 1)], [0.2], paper) > fixed + 8 * 2**30


def test_a_micrograph_too_large_for_the_limit_is_refused_before_any_work(
    two_model_root, tmp_path, capsys
):
    image = _micrograph(tmp_path / "big.npy", side=512)
    out = tmp_path / "out"
    code, err = _run_cli(
        capsys, "predict", "--study", two_model_root, "--model", "best:0", image,
        "--pixel-size-angstrom", 2.0, "-o", out, "--max-memory", "200MB",
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT and err.count("error:") == 1
    assert "more than the limit of --max-memory (190.7 MiB)" in err
    assert "big.npy (512 x 512 px at 2 A/px) is resampled to 2560 x 2560 px" in err
    assert not out.exists()
    micrograph = read_micrograph(image, 2.0)
    estimate = check_predict_memory([micrograph], GEOMETRY, max_memory_bytes=2**40)
    assert estimate == estimate_predict_memory_bytes([(512, 512)], [2.0], GEOMETRY)


_MEASURE_PREDICT = """
import json, sys, torch
import hrtem_ray
import scipy.fft, skimage.measure, skimage.transform  # what predict loads on its first file
from hrtem_ray.inference import load_study_model

def status_bytes(field):
    # VmRSS: resident now; VmHWM: peak of this process image (ru_maxrss would keep the
    # parent's peak across fork and exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

torch.set_num_threads(1)
study, path, out = sys.argv[1:4]
load_study_model(study, "best:0")  # torch and a model loaded, as predict has before its first file
before = status_bytes("VmRSS")
hrtem_ray.predict(study, "best:0", [path], out, pixel_size_angstrom=1.0, device="cpu")
print(json.dumps({"before": before, "after": status_bytes("VmHWM")}))
"""


@pytest.mark.slow
def test_the_estimate_covers_the_measured_peak_of_a_resampled_micrograph(two_model_root, tmp_path):
    """512 px at 1.0 A/px (1,280 px on the model's grid), in a fresh process: the estimate
    covers the measured peak, within 3x. The process's own base (torch's build differs
    between machines) replaces PREDICT_BASE_BYTES where it is larger."""
    image = _micrograph(tmp_path / "m.npy", side=512)
    command = [sys.executable, "-c", _MEASURE_PREDICT, str(two_model_root), str(image)]
    proc = subprocess.run(
        [*command, str(tmp_path / "o")], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    estimate = estimate_predict_memory_bytes([(512, 512)], [1.0], GEOMETRY)
    estimate += max(0, measured["before"] - PREDICT_BASE_BYTES)
    assert measured["after"] <= estimate <= 3 * measured["after"]


# ------------------------------------------------------------------ headers


def _huge_npy(path: Path) -> Path:
    """An NPY header declaring 200,000 x 200,000 float32 pixels, with no data after it."""
    with path.open("wb") as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"shape": (200_000, 200_000), "fortran_order": False, "descr": "<f4"}
        )
    return path


def _huge_tiff(path: Path) -> Path:
    """A 64 px TIFF whose header is rewritten to claim 200,000 x 200,000 pixels."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(200_000)
        tif.pages[0].tags["ImageLength"].overwrite(200_000)
    return path


@pytest.mark.parametrize(
    ("make", "dtype"), [(_huge_npy, "float32"), (_huge_tiff, "uint16")], ids=["npy", "tiff"]
)
def test_a_header_claiming_200k_squared_pixels_is_refused_before_reading(tmp_path, make, dtype):
    path = make(tmp_path / f"huge.{'npy' if make is _huge_npy else 'tif'}")
    pattern = rf"declares 200000 x 200000 px of {dtype} \(40,000,000,000 pixels\); reading it needs"
    with pytest.raises(MicrographError, match=pattern):
        read_micrograph(path, 1.0)
    check_image_size(path, memory_bytes=2**50)  # a machine that has it reads it


def test_import_and_predict_of_a_huge_header_exit_2_with_nothing_written(
    two_model_root, tiny_dataset_root, tmp_path, capsys
):
    huge = _huge_npy(tmp_path / "huge.npy")
    out = tmp_path / "out"
    code, err = _run_cli(
        capsys, "predict", "--study", two_model_root, "--model", "best:0", huge,
        "--pixel-size-angstrom", 1.0, "-o", out,
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT and "declares 200000 x 200000 px" in err and not out.exists()
    data = Path(shutil.copytree(tiny_dataset_root, tmp_path / "data"))
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    code, err = _run_cli(
        capsys, "import", huge, "--data", data, "--domain", "exp_huge",
        "--pixel-size-angstrom", 1.0,
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT and err.count("error:") == 1 and "declares 200000" in err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_an_ensemble_adds_its_members_and_std_map_to_the_estimate():
    """Each member beyond the first keeps a probability of the file being segmented, and the
    ensemble keeps a std map of every file: the estimate grows by exactly those bytes."""
    from hrtem_ray.predict_budget import (
        HELD_ENSEMBLE_BYTES_PER_INPUT_PIXEL,
        MEMBER_BYTES_PER_INPUT_PIXEL,
    )

    shapes, pixels = [(512, 512), (256, 256)], [1.0, 1.0]
    one = estimate_predict_memory_bytes(shapes, pixels, GEOMETRY)
    three = estimate_predict_memory_bytes(shapes, pixels, GEOMETRY, n_models=3)
    largest, total = 512 * 512, 512 * 512 + 256 * 256
    extra = 2 * MEMBER_BYTES_PER_INPUT_PIXEL * largest + HELD_ENSEMBLE_BYTES_PER_INPUT_PIXEL * total
    assert three - one == extra
