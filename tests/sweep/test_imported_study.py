"""A study on an imported domain: threshold rows, the held-out micrographs it is scored on.

The micrographs are the tiny dataset's own "10" images written as calibrated TIFFs at
0.3 Å/px (:func:`hrtem_ray.dataset.micrographs.export_micrographs`), imported with
masks and a whole-file test split; trials run without Ray (:func:`helpers.train_study_root`).
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
from helpers import TINY_STUDY, train_study_root

from hrtem_ray.dataset.micrographs import export_micrographs, import_micrographs
from hrtem_ray.dataset.readers import read_images
from hrtem_ray.learning.threshold import pooled_iou, threshold_segment
from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.sweep.results import read_results
from hrtem_ray.sweep.trials import dry_run, plan_trials

RAW = {
    **TINY_STUDY,
    "domains": {"imported": ["exp"], "pretrain": ["0"], "transfer": ["exp"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": {"lr": [1e-4], "n_images": [2, 4], "freeze": ["none"]},
    "baseline": None,
    "training": {"epochs": 1, "batch_size": 4},
}


@pytest.fixture(scope="module")
def imported_root(tiny_dataset_root, tmp_path_factory):
    """A copy of the tiny dataset with domain ``exp``: 12 micrographs, 3 held out whole."""
    root = tmp_path_factory.mktemp("imported") / "data"
    shutil.copytree(tiny_dataset_root, root)
    mic = root.parent / "mic"
    files = export_micrographs(root, "10", mic, pixel_size_angstrom=0.3)
    masks = sorted((mic / "masks").glob("*.tif"))
    summary = import_micrographs(files, root, "exp", masks=masks, test_fraction=0.25)
    assert summary.tiles["test"] > 0
    return root


def _spec(root):
    raw = copy.deepcopy(RAW)
    raw["dataset"] = {**raw["dataset"], "path": str(root)}
    return parse_study_spec(raw, source="tests")


def test_threshold_trials_are_planned_per_imported_domain_and_size(imported_root):
    spec = _spec(imported_root)
    plan = plan_trials(spec)
    assert [(t.pretrain_domain, t.n_pretrain) for t in plan.threshold] == [("exp", 2), ("exp", 4)]
    assert plan.counts() == {"pretrain": 1, "transfer": 2, "baseline": 0, "threshold": 2}
    text = dry_run(spec)
    assert text.splitlines()[0].endswith("2 threshold, 5 models in all")
    assert "threshold: 2 blur + Otsu baselines of imported domains (exp), no training" in text
    # a study without imported domains plans none (and its first line keeps its form)
    plain = plan_trials(parse_study_spec({**TINY_STUDY, "name": "plain"}, source="tests"))
    assert plain.threshold == [] and "threshold" not in plain.counts()


def test_threshold_rows_exist_and_are_computed_on_the_held_out_micrographs(imported_root, tmp_path):
    """The threshold's IoU is that of its blur and polarity on the test tiles (recomputed
    here), every network is scored on the same tiles, and no loss is claimed."""
    spec = _spec(imported_root)
    train_study_root(RAW, imported_root, tmp_path, phases=("threshold",))
    rows = read_results(str(tmp_path))
    assert rows.get_column("phase").unique().to_list() == ["threshold"]
    assert rows.get_column("eval_split").unique().to_list() == ["test"]
    assert (
        rows.get_column("loss").is_null().all() and rows.get_column("pretrain_lr").is_null().all()
    )
    test = read_images(imported_root, "exp", "test")
    for row in rows.iter_rows(named=True):
        predicted = threshold_segment(
            test.images, row["threshold_sigma_px"], row["threshold_polarity"]
        )
        assert row["iou"] == pytest.approx(pooled_iou(predicted, test.masks))
        assert row["n_pretrain"] in (2, 4) and row["eval_domain"] == "exp"
    assert {t.model_id for t in plan_trials(spec).threshold} == set(rows["model_id"])


def test_threshold_polarity_follows_the_contrast(imported_root):
    """Inverting the images flips the chosen polarity and keeps the blur and IoU."""
    from hrtem_ray.learning.threshold import fit_threshold

    train = read_images(imported_root, "exp", "train", 4)
    fitted = fit_threshold(train.images, train.masks)
    inverted = fit_threshold(-train.images, train.masks)
    assert {fitted.polarity, inverted.polarity} == {"dark", "bright"}
    assert inverted.sigma_px == fitted.sigma_px
    assert inverted.train_iou == pytest.approx(fitted.train_iou)
    assert 0 <= fitted.train_iou <= 1 and fitted.n_train == 4
    with pytest.raises(ValueError, match="one shape"):
        fit_threshold(train.images, train.masks[:1])
    assert np.isfinite(fitted.sigma_px)


def test_random_target_images_pair_transfer_and_scratch_and_fit_a_threshold_per_seed(
    imported_root,
):
    """Under ``training.target_images: random`` a transfer model and a from-scratch
    baseline of one seed train on the same drawn tiles, seeds draw differently, and the
    threshold is fitted on each seed's draw."""
    from hrtem_ray.sweep.execute import training_set

    raw = copy.deepcopy(RAW)
    raw["dataset"] = {**raw["dataset"], "path": str(imported_root)}
    raw["pretrain"]["seeds"] = [0, 1, 2]
    raw["baseline"] = {"pairs": [["0", "exp"]], "mixtures": [[0, 2]], "lr": [1e-3],
                       "seeds": [0, 1, 2]}  # fmt: skip
    raw["training"] = {**raw["training"], "target_images": "random"}
    plan = plan_trials(parse_study_spec(raw, source="tests"))
    assert sorted((t.n_pretrain, t.seed) for t in plan.threshold) == [
        (n, s) for n in (2, 4) for s in (0, 1, 2)
    ]
    tiles = {}
    for trial in plan.transfer + plan.baseline + plan.threshold:
        n = trial.n_pretrain if trial.phase == "threshold" else trial.n_transfer
        tiles.setdefault((n, trial.seed), []).append(training_set(trial, str(imported_root)))
    for sets in tiles.values():
        for images, masks in sets[1:]:  # the same tiles for every method of a seed
            np.testing.assert_array_equal(images, sets[0][0])
            np.testing.assert_array_equal(masks, sets[0][1])
    drawn = [tiles[(4, s)][0][0] for s in (0, 1, 2)]
    assert any(not np.array_equal(drawn[0], d) for d in drawn[1:])
    first = read_images(imported_root, "exp", "train", 4)
    assert any(not np.array_equal(first.images, d) for d in drawn)
