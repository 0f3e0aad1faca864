"""predict --ensemble, suggest and pixel-size on a study with two replicate models.

Two pretrain models of one configuration (seeds 0 and 1, a few epochs on the tiny
simulated dataset) are trained without Ray into a study root, as a sweep stores them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
from helpers import TWO_MODEL_STUDY, run_cli, train_study_root

import hrtem_ray
from hrtem_ray.dataset import readers
from hrtem_ray.dataset.micrograph_files import MicrographError
from hrtem_ray.inference import (
    ENSEMBLE_COLUMNS,
    PredictError,
    ensemble_probability,
    load_study_models,
    torch_threads,
)
from hrtem_ray.realdata import TransferCheck, choose_pixel_size, rank_regions, suggest
from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.sweep.run import write_study_spec

RAW = {
    **TWO_MODEL_STUDY,
    "domains": {"pretrain": ["0"], "eval": ["0"]},
    "pretrain": {"lr": [3e-3], "n_images": [6], "seeds": [0, 1]},
    "transfer": None,
    "training": {"epochs": 4, "batch_size": 6},
}


@pytest.fixture(scope="module")
def replicated_root(tiny_dataset_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("replicates")
    train_study_root(RAW, tiny_dataset_root, root)
    spec = parse_study_spec(RAW, source="tests")
    write_study_spec(str(root), spec, str(tiny_dataset_root))
    return root


@pytest.fixture(scope="module")
def micrographs(tiny_dataset_root, tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """The "0" validation images as NPY micrographs (no calibration) with NPY masks."""
    folder = tmp_path_factory.mktemp("npy")
    val = readers.read_images(tiny_dataset_root, "0", "val")
    files, masks = [], []
    for k, (image, mask) in enumerate(zip(val.images, val.masks, strict=True)):
        files.append(folder / f"m{k}.npy")
        np.save(files[-1], np.tile(image, (2, 2)))
        masks.append(folder / f"m{k}_mask.npy")
        np.save(masks[-1], np.tile(mask, (2, 2)))
    return files, masks


def _identical_copy(root: Path, tmp_path: Path) -> Path:
    """The study root with the seed-1 model's checkpoint replaced by the seed-0 model's."""
    copy = tmp_path / "identical"
    shutil.copytree(root, copy)
    ids = sorted(p.name for p in (copy / "checkpoints").iterdir())
    shutil.rmtree(copy / "checkpoints" / ids[1])
    shutil.copytree(copy / "checkpoints" / ids[0], copy / "checkpoints" / ids[1])
    return copy


def test_ensemble_std_is_zero_for_identical_models_and_positive_for_different(
    replicated_root, micrographs, tmp_path
):
    files, _ = micrographs
    different = hrtem_ray.predict(
        replicated_root, "best:0", files[:1], tmp_path / "d", pixel_size_angstrom=0.4,
        ensemble=True, num_threads=1,
    )  # fmt: skip
    same = hrtem_ray.predict(
        _identical_copy(replicated_root, tmp_path), "best:0", files[:1], tmp_path / "s",
        pixel_size_angstrom=0.4, ensemble=True, num_threads=1,
    )  # fmt: skip
    assert len(different.model_ids) == 2 and len(same.model_ids) == 2
    assert np.all(same.std["m0.npy"] == 0) and different.std["m0.npy"].max() > 0
    assert set(ENSEMBLE_COLUMNS) <= set(different.particles.columns)
    if same.particles.height:
        assert (same.particles.get_column("probability_spread") == 0).all()
    std_tif = tmp_path / "d" / "m0_std.tif"
    with tifffile.TiffFile(std_tif) as tif:
        assert tif.imagej_metadata["unit"] == "nm"
        np.testing.assert_array_equal(tif.asarray(), different.std["m0.npy"].astype(np.float32))
    assert (tmp_path / "d" / "m0_std.png").is_file()


def test_an_ensemble_needs_replicates(replicated_root, micrographs, tmp_path):
    files, _ = micrographs
    lonely = tmp_path / "lonely"
    shutil.copytree(replicated_root, lonely)
    ids = sorted(p.name for p in (lonely / "checkpoints").iterdir())
    shutil.rmtree(lonely / "checkpoints" / ids[1])
    with pytest.raises(PredictError, match="has 1 model.*needs replicates"):
        hrtem_ray.predict(lonely, "best:0", files[:1], tmp_path / "o", pixel_size_angstrom=0.4,
                          ensemble=True)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_suggest_ranks_a_tile_the_models_disagree_on_above_one_they_agree_on(
    replicated_root, micrographs, tmp_path
):
    """Real probability maps: the two different models on one file, one model twice on
    the other; the disagreeing file's tiles rank first, and the agreeing one scores 0."""
    files, _ = micrographs
    models = load_study_models(str(replicated_root), "best:0", ensemble=True)
    from hrtem_ray.dataset.micrograph_files import read_micrograph

    with torch_threads(1):
        stack = ensemble_probability(models, read_micrograph(files[0], 0.4))
    members = {"agree.npy": np.stack([stack[0], stack[0]]), "disagree.npy": stack}
    table = rank_regions(members, tile_px=64)
    assert table.get_column("source").to_list()[:4] == ["disagree.npy"] * 4
    assert table.filter(table["source"] == "agree.npy").get_column("disagreement").max() == 0
    ranked = suggest(replicated_root, "best:0", files[:2], tmp_path / "s", top_n=3,
                     pixel_size_angstrom=0.4, num_threads=1)  # fmt: skip
    assert ranked.height == 3 and ranked["rank"].to_list() == [1, 2, 3]
    assert ranked["disagreement"].is_sorted(descending=True)
    assert (tmp_path / "s" / "contact_sheet.png").is_file()
    assert (tmp_path / "s" / "suggestions.csv").is_file()


def test_pixel_size_evidence_names_every_candidate_and_keeps_the_best(
    replicated_root, micrographs, tmp_path
):
    files, masks = micrographs
    choice = choose_pixel_size(replicated_root, "best:0", files[:1], masks[:1], [0.3, 0.6],
                               num_threads=1)  # fmt: skip
    evidence = choice.evidence
    assert evidence["pixel_size_angstrom"].to_list() == [0.3, 0.6]
    assert choice.pixel_size_angstrom == evidence.sort("iou", descending=True).item(0, 0)
    assert "<- chosen" in choice.describe()
    calibrated = tmp_path / "c.tif"
    tifffile.imwrite(calibrated, np.load(files[0]), imagej=True, resolution=(25.0, 25.0),
                     metadata={"unit": "nm"})  # fmt: skip
    with pytest.raises(MicrographError, match="has its own calibration"):
        choose_pixel_size(replicated_root, "best:0", [calibrated], masks[:1], [0.4])


def test_pixel_size_by_transfer_checks_the_shortlist_on_held_out_files(
    replicated_root, micrographs, capsys
):
    """With a transfer check the simulation-only IoU ranks the candidates on the training
    files only, the best two are each checked by a transfer on 2 tiles scored on the
    held-out file, and that score chooses; bad validation files are refused first."""
    from hrtem_ray.cli import main

    files, masks = micrographs
    check = TransferCheck((files[-1].name,), tiles=2, shortlist=2, max_epochs=2, patience=1)
    choice = choose_pixel_size(replicated_root, "best:0", files, masks, [0.3, 0.4, 0.6],
                               num_threads=1, transfer=check)  # fmt: skip
    evidence = choice.evidence
    assert evidence["files"].to_list() == [len(files) - 1] * 3
    tried = evidence.filter(pl.col("val_iou_after_transfer").is_not_null())
    best_two = evidence.sort("iou", descending=True, maintain_order=True).head(2)
    assert sorted(tried["pixel_size_angstrom"]) == sorted(best_two["pixel_size_angstrom"])
    top = tried.sort("val_iou_after_transfer", descending=True).item(0, "pixel_size_angstrom")
    assert choice.pixel_size_angstrom == top
    assert "after transfer, on validation files" in choice.describe()
    for held, match in (
        (("elsewhere.npy",), "not among the labelled files"),
        (tuple(f.name for f in files), "leave at least one labelled file"),
    ):
        with pytest.raises(MicrographError, match=match):
            choose_pixel_size(replicated_root, "best:0", files, masks, [0.4],
                              transfer=TransferCheck(held))  # fmt: skip
    code = main(["pixel-size", *map(str, files), "--masks", *map(str, masks), "--study",
                 str(replicated_root), "--model", "best:0", "--candidates", "0.4", "0.6",
                 "--val-files", str(files[0]), "--transfer-tiles", "1", "--shortlist", "1",
                 "--num-threads", "1"])  # fmt: skip
    assert code == 0
    assert "after transfer, on validation files" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_predict_ensemble_and_suggest(replicated_root, micrographs, tmp_path):
    files, masks = micrographs
    proc = run_cli("predict", "--study", replicated_root, "--model", "best:0", "--ensemble", "--num-threads", "1",
                   "--pixel-size-angstrom", "0.4", *files[:1], "-o", tmp_path / "p")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "an ensemble of 2 replicates" in proc.stdout
    proc = run_cli("suggest", "--study", replicated_root, "--model", "best:0", "--top", "2", "--num-threads", "1",
                   "--pixel-size-angstrom", "0.4", *files, "-o", tmp_path / "s")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s" / "contact_sheet.png").is_file()
    proc = run_cli("pixel-size", *files[:1], "--masks", *masks[:1], "--study", replicated_root,
                   "--model", "best:0", "--candidates", "0.4", "0.8", "--num-threads", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr and "<- chosen" in proc.stdout
    bad = run_cli("suggest", "--study", replicated_root, "--model", "best:0", "--top", "0",
                  "--pixel-size-angstrom", "0.4", *files, "-o", tmp_path / "b")  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --top")
