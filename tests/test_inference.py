"""hrtem-ray predict: model choice, tiled and blended inference, outputs, round trip, seams.

One real model is trained (plain torch, :func:`hrtem_ray.sweep.execute.execute_trial`, a few
epochs) on the tiny simulated dataset and stored in a study root with its results and
``study.json``, as a sweep stores it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
from helpers import TWO_MODEL_STUDY
from PIL import Image

import hrtem_ray
from hrtem_ray.dataset import readers
from hrtem_ray.dataset.geometry import resample
from hrtem_ray.dataset.micrograph_files import MicrographError, read_micrograph
from hrtem_ray.dataset.micrographs import import_micrographs
from hrtem_ray.inference import (
    PARTICLE_COLUMNS,
    PredictError,
    blend_window,
    choose_model,
    load_study_model,
    predict_probability,
)
from hrtem_ray.learning.train import evaluate, predict
from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.sweep.execute import execute_trial
from hrtem_ray.sweep.run import write_study_spec
from hrtem_ray.sweep.trials import plan_trials

PIXEL_ANGSTROM = 0.4  # the tiny dataset's (and so the model's) pixel size
OTHER_ANGSTROM = 0.3  # the micrographs' pixel size in the round trip


@pytest.fixture(scope="module")
def study_root(tiny_dataset_root, tmp_path_factory) -> Path:
    """A study root with one pretrained model (domain "0", 12 epochs) and its results."""
    raw = {
        **TWO_MODEL_STUDY,
        "domains": {"pretrain": ["0"], "eval": ["0", "10"]},
        "pretrain": {"lr": [3e-3], "n_images": [6], "seeds": [0]},
        "transfer": None,
        "training": {"epochs": 12, "batch_size": 6},
    }
    spec = parse_study_spec(raw, source="tests")
    root = tmp_path_factory.mktemp("predict-study")
    (trial,) = plan_trials(spec).pretrain
    execute_trial(
        spec, trial, dataset_root=str(tiny_dataset_root), study_root=str(root), num_threads=2
    )
    write_study_spec(str(root), spec, str(tiny_dataset_root))
    return root


def _save_calibrated(path: Path, image: np.ndarray, pixel_angstrom: float) -> None:
    size_nm = pixel_angstrom / 10
    tifffile.imwrite(
        path,
        image.astype(np.float32),
        imagej=True,
        resolution=(1 / size_nm, 1 / size_nm),
        metadata={"unit": "nm"},
    )


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(predicted, truth).sum()
    union = np.logical_or(predicted, truth).sum()
    return float(inter / union)


def test_best_domain_picks_the_lowest_loss_and_says_why(study_root):
    choice = choose_model(str(study_root), "best:0")
    assert choice.model_id.startswith("pretrain-")
    assert "lowest loss on 0" in choice.reason and "IoU" in choice.reason
    with pytest.raises(PredictError, match="no results on domain 'exp'; evaluated: 0, 10"):
        choose_model(str(study_root), "best:exp")
    with pytest.raises(PredictError, match="no usable checkpoint"):
        choose_model(str(study_root), "pretrain-000000000000")


def test_round_trip_calibrated_tiffs_at_another_pixel_size(study_root, tiny_dataset_root, tmp_path):
    """Validation images saved as TIFFs at 0.3 Å/px (band-limited upsampling), imported and
    predicted, give the same model the same probability maps as the original images.

    The check compares two predictions of one model within one run, so it holds whatever the
    short CPU training learned (torch's CPU kernels differ across machines, and so does how
    far 12 epochs get); IoU against the truth is printed for information only.
    """
    val = readers.read_images(tiny_dataset_root, "0", "val")
    model = load_study_model(str(study_root), "best:0").model
    reference = predict(model, val.images)  # (N, H, W) on the model's own grid

    files, masks = [], []
    for k, (image, mask) in enumerate(zip(val.images, val.masks, strict=True)):
        fine = resample(image, PIXEL_ANGSTROM, OTHER_ANGSTROM)
        fine_mask = resample(mask, PIXEL_ANGSTROM, OTHER_ANGSTROM, shape=fine.shape, mask=True)
        files.append(tmp_path / f"val{k}.tif")
        _save_calibrated(files[-1], fine, OTHER_ANGSTROM)
        masks.append(tmp_path / f"val{k}_mask.npy")
        np.save(masks[-1], fine_mask)

    # imported as a domain: the tiles are back on the model's grid, with their masks
    dataset = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, dataset)
    import_micrographs(files, dataset, "exp_val", masks=masks, val_fraction=0)
    imported = readers.read_images(dataset, "exp_val", "train")
    assert imported.images.shape == val.images.shape
    assert np.mean((imported.masks > 0.5) == (val.masks > 0.5)) >= 0.98
    imported_prob = predict(model, imported.images)
    print(f"mean |p_imported - p_original| {np.abs(imported_prob - reference).mean():.4f}")
    assert np.abs(imported_prob - reference).mean() <= 0.02
    assert np.mean((imported_prob > 0.5) == (reference > 0.5)) >= 0.95

    # predicted on their own 0.3 Å grid by the API: the reference map brought to that grid
    result = hrtem_ray.predict(study_root, "best:0", files)
    for k, f in enumerate(files):
        prob = result.probabilities[f.name]
        expected = resample(reference[k], PIXEL_ANGSTROM, OTHER_ANGSTROM, shape=prob.shape)
        print(f"{f.name}: mean |p_predict - p_original| {np.abs(prob - expected).mean():.4f}")
        assert np.abs(prob - expected).mean() <= 0.02, f.name
        assert np.mean(result.masks[f.name] == (expected > 0.5)) >= 0.95, f.name
    in_dataset = evaluate(model, {"0": (val.images, val.masks)})["0"].iou
    imported_iou = evaluate(model, {"d": (imported.images, imported.masks)})["d"].iou
    print(
        f"IoU against the truth (information): in dataset {in_dataset:.3f}, imported {imported_iou:.3f}"
    )


def _seam_ratio(prob: np.ndarray, borders: list[int]) -> float:
    """Mean |step| between neighbouring pixels across tile borders / elsewhere (rows and columns)."""
    steps_x = np.abs(np.diff(prob, axis=1)).mean(axis=0)  # steps_x[j]: between j and j + 1
    steps_y = np.abs(np.diff(prob, axis=0)).mean(axis=1)
    at = np.zeros(len(steps_x), bool)
    at[np.asarray(borders) - 1] = True
    return float(
        (steps_x[at].mean() + steps_y[at].mean()) / (steps_x[~at].mean() + steps_y[~at].mean())
    )


def _tile_borders(side: int, tile_px: int, overlap_px: int) -> list[int]:
    from hrtem_ray.dataset.geometry import tile_starts

    starts = tile_starts(side, tile_px, overlap_px)
    return sorted({b for s in starts for b in (s, s + tile_px) if 0 < b < side})


def test_a_2048_px_mosaic_shows_no_seams(study_root, tiny_dataset_root):
    """Blended tiles: the steps across tile borders are no larger than inside the tiles
    (ratio < 1.2); without overlap and blending the same check finds the seams (> 1.5)."""
    loaded = load_study_model(str(study_root), "best:0")
    images = readers.read_images(tiny_dataset_root, "0", "train").images
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(images), (33, 33))
    # offset by 17 px so that the mosaic's own block edges are not at tile borders
    mosaic = np.block([[images[i] for i in row] for row in picks])[17 : 17 + 2048, 17 : 17 + 2048]
    tile = loaded.tile_px
    blended = predict_probability(loaded.model, mosaic, tile)  # default overlap: tile // 4
    ratio = _seam_ratio(blended, _tile_borders(2048, tile, tile // 4))
    crop = mosaic[:1024, :1024]
    plain = predict_probability(loaded.model, crop, tile, 0)
    plain_ratio = _seam_ratio(plain, _tile_borders(1024, tile, 0))
    print(f"seam ratio blended {ratio:.3f}, without overlap {plain_ratio:.3f}")
    assert blended.shape == (2048, 2048) and np.isfinite(blended).all()
    assert ratio < 1.2
    assert plain_ratio > 1.5


def test_blend_window_is_smooth_and_positive():
    window = blend_window(64)
    assert window.min() > 0 and window.max() <= 1
    assert window[0, 0] < 0.01 and window[32, 32] > 0.99


def test_predict_writes_calibrated_masks_overlays_and_the_particle_table(
    study_root, tiny_dataset_root, tmp_path, caplog
):
    val = readers.read_images(tiny_dataset_root, "0", "val")
    mosaic = np.block([[val.images[0], val.images[1]], [val.images[2], val.images[0]]])
    path = tmp_path / "micrograph.tif"
    _save_calibrated(path, mosaic, PIXEL_ANGSTROM)
    out = tmp_path / "pred"
    with caplog.at_level(logging.INFO, logger="hrtem_ray"):
        result = hrtem_ray.predict(study_root, "best:0", [path], out)
    lines = [r.getMessage() for r in caplog.records if r.name == "hrtem_ray.inference"]
    assert lines[0].startswith("model: best:0: pretrain-")
    for name in ("micrograph_mask.tif", "micrograph_mask.png", "micrograph_overlay.png"):
        assert (out / name).is_file(), name
    saved = read_micrograph(out / "micrograph_mask.tif")
    assert saved.pixel_size_angstrom == pytest.approx(PIXEL_ANGSTROM, rel=1e-6)
    mask = result.masks["micrograph.tif"]
    assert mask.shape == mosaic.shape
    np.testing.assert_array_equal(saved.image > 0, mask)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "micrograph_mask.png")) > 0, mask)
    assert np.asarray(Image.open(out / "micrograph_overlay.png")).shape == (128, 128, 3)
    table = pl.read_parquet(out / "particles.parquet")
    assert tuple(table.columns) == PARTICLE_COLUMNS
    assert (
        table.equals(result.particles) and pl.read_csv(out / "particles.csv").height == table.height
    )
    assert table.height >= 1
    pixel_nm2 = (PIXEL_ANGSTROM / 10) ** 2
    assert table.get_column("area_nm2").sum() == pytest.approx(mask.sum() * pixel_nm2)
    assert table.get_column("mean_probability").min() > 0.5
    assert (table.get_column("centroid_x_nm") <= 128 * PIXEL_ANGSTROM / 10).all()


def test_predict_errors_before_anything_is_written(study_root, tmp_path):
    good = tmp_path / "a.tif"
    _save_calibrated(good, np.random.default_rng(0).random((64, 64)), PIXEL_ANGSTROM)
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "a.npy"
    np.save(twin, np.zeros((64, 64), np.float32))
    out = tmp_path / "out"
    with pytest.raises(MicrographError, match="same name 'a'"):
        hrtem_ray.predict(study_root, "best:0", [good, twin], out)
    with pytest.raises(MicrographError, match="unknown format"):
        hrtem_ray.predict(study_root, "best:0", [tmp_path / "x.xyz"], out)
    with pytest.raises(PredictError, match="no results on domain"):
        hrtem_ray.predict(study_root, "best:nowhere", [good], out)
    assert not out.exists()


def test_cli_predict_warns_about_a_real_stem_image_and_still_predicts(study_root, tmp_path, capsys):
    """A real DM3 whose metadata say STEM (operation mode SCANNING, no detector recorded):
    ``hrtem-ray predict`` prints the warning as one line, then predicts (68 px at 2.49 Å/px,
    422 px on the model's grid)."""
    from hrtem_ray.cli import main

    real = Path(__file__).resolve().parent / "data" / "real_em" / "test_STEM_image.dm3"
    out = tmp_path / "predicted"
    code = main(
        ["predict", "--study", str(study_root), "--model", "best:0", str(real), "-o", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert warning == (
        f"warning: {real}: a STEM image (operation mode: SCANNING; detector not recorded); if "
        "it is dark-field (ADF/HAADF), its contrast is unlike the phase-contrast bright-field "
        "HRTEM images the models were trained on"
    )
    assert "predicted 1 files" in captured.out and (out / "test_STEM_image_mask.tif").is_file()


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_one_output_directory_holds_one_predict_run_unless_overwrite(
    study_root, tiny_dataset_root, tmp_path
):
    """A second run (other files) into the same directory is refused before anything is
    written; the same run again writes the same outputs; --overwrite replaces the first run's
    outputs, so that the particle table lists exactly the files whose masks are there.
    Files that are not predict outputs are left alone."""
    from hrtem_ray.inference import RUN_RECORD

    val = readers.read_images(tiny_dataset_root, "0", "val")
    first, second = tmp_path / "first.tif", tmp_path / "second.tif"
    _save_calibrated(first, val.images[0], PIXEL_ANGSTROM)
    _save_calibrated(second, val.images[1], PIXEL_ANGSTROM)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    hrtem_ray.predict(study_root, "best:0", [first], out)
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["complete"] and [f["name"] for f in record["files"]] == ["first.tif"]
    assert "first_mask.tif" in record["outputs"] and "particles.csv" in record["outputs"]
    before = _outputs(out)
    with pytest.raises(PredictError, match=r"holds the results of another predict run \(model "):
        hrtem_ray.predict(study_root, "best:0", [second], out)
    with pytest.raises(PredictError, match="--overwrite"):  # another threshold: another run
        hrtem_ray.predict(study_root, "best:0", [first], out, threshold=0.7)
    assert _outputs(out) == before
    hrtem_ray.predict(study_root, "best:0", [first], out)  # the same run: the same outputs
    assert _outputs(out).keys() == before.keys()
    result = hrtem_ray.predict(study_root, "best:0", [second], out, overwrite=True)
    names = set(_outputs(out))
    assert not any(n.startswith("first_") for n in names) and "second_mask.tif" in names
    assert (out / "notes.txt").read_text() == "mine"
    table = pl.read_parquet(out / "particles.parquet")
    assert set(table.get_column("source").to_list()) <= {"second.tif"}
    assert table.equals(result.particles)
    assert [f["name"] for f in json.loads((out / RUN_RECORD).read_text())["files"]] == [
        "second.tif"
    ]


@pytest.mark.slow
def test_predict_tta_follows_a_rotated_micrograph(study_root, tiny_dataset_root, tmp_path):
    """``predict --tta``: on a one-tile micrograph, the probability of the rotated file is
    the rotated probability (not so without it), and the run record says it; a plain run
    into the same folder is another run."""
    from hrtem_ray.cli import main
    from hrtem_ray.inference import RUN_RECORD

    image = readers.read_images(tiny_dataset_root, "0", "val").images[1]
    files = [tmp_path / "upright.tif", tmp_path / "turned.tif"]
    _save_calibrated(files[0], image, PIXEL_ANGSTROM)
    _save_calibrated(files[1], np.rot90(image).copy(), PIXEL_ANGSTROM)
    out = tmp_path / "tta"
    args = ["predict", "--study", str(study_root), "--model", "best:0", *map(str, files)]
    assert main([*args, "-o", str(out), "--tta"]) == 0
    assert json.loads((out / RUN_RECORD).read_text())["tta"] is True
    for tta in (True, False):
        result = hrtem_ray.predict(study_root, "best:0", files, tta=tta)
        upright, turned = result.probabilities["upright.tif"], result.probabilities["turned.tif"]
        difference = np.abs(turned - np.rot90(upright)).max()
        assert difference < 1e-4 if tta else difference > 1e-3
    with pytest.raises(PredictError, match="another predict run"):
        hrtem_ray.predict(study_root, "best:0", files, out)


def test_cli_import_then_predict(study_root, tiny_dataset_root, tmp_path):
    """``hrtem-ray import`` and ``hrtem-ray predict`` as a user runs them; bad input exits 2."""
    from helpers import run_cli

    val = readers.read_images(tiny_dataset_root, "0", "val")
    files, masks = [], []
    for k, (image, mask) in enumerate(zip(val.images, val.masks, strict=True)):
        fine = resample(image, PIXEL_ANGSTROM, OTHER_ANGSTROM)
        files.append(tmp_path / f"m{k}.tif")
        _save_calibrated(files[-1], fine, OTHER_ANGSTROM)
        masks.append(tmp_path / f"m{k}.png")
        fine_mask = resample(mask, PIXEL_ANGSTROM, OTHER_ANGSTROM, shape=fine.shape, mask=True)
        Image.fromarray((fine_mask > 0.5).astype(np.uint8) * 255).save(masks[-1])
    dataset = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, dataset)
    args = ["import", *files, "--data", dataset, "--domain", "exp_cli", "--masks", *masks]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert (
        "domain exp_cli" in proc.stdout and "2 train + 1 val + 0 test tiles of 64 px" in proc.stdout
    )
    again = run_cli(*args)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    other = run_cli(*args[:-4], "--masks", masks[1], masks[0], masks[2])  # other pairs
    assert other.returncode == 2 and "already holds an imported domain 'exp_cli'" in other.stderr
    out = tmp_path / "predicted"
    proc = run_cli("predict", "--study", study_root, "--model", "best:0", *files, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "model: best:0: pretrain-" in proc.stderr and "predicted 3 files" in proc.stdout
    assert (out / "m0_mask.tif").is_file() and (out / "particles.csv").is_file()
    proc = run_cli("predict", "--study", study_root, "--model", "best:0", files[0], "-o", out)
    assert proc.returncode == 2 and proc.stderr.startswith("error: -o "), proc.stderr
    assert "another predict run" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(
        "predict", "--study", study_root, "--model", "best:0", files[0], "-o", out, "--overwrite"
    )
    assert proc.returncode == 0, proc.stderr
    assert not (out / "m1_mask.tif").exists() and (out / "m0_mask.tif").is_file()
