"""The prediction panel, on three pretrain models trained for real (without Ray, 2 epochs).

The panel's content is checked against the files the trials wrote (the results, the
checkpoints, the dataset's images and masks), never against how well the models learned.
"""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import polars as pl
import pytest
from helpers import TINY_DATASET, train_study_root
from PIL import Image

from hrtem_ray import analysis
from hrtem_ray.dataset.manifest import dataset_spec
from hrtem_ray.dataset.readers import read_images
from hrtem_ray.report import predictions
from hrtem_ray.report.vega import chart_spec
from hrtem_ray.store.layout import CHECKPOINT_DIR, RESULTS_DIR

DOMAINS = ["-10", "0", "10"]


@pytest.fixture(scope="module")
def pretrained_root(tiny_dataset_root, tmp_path_factory):
    """A study root with one pretrain model (and checkpoint) per domain, scored on all three."""
    raw = {
        "name": "predictions",
        "dataset": TINY_DATASET,
        "domains": {"pretrain": DOMAINS, "transfer": ["10"], "eval": DOMAINS},
        "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
        "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none"]},
        "training": {"epochs": 2, "batch_size": 4},
        "model": {"size": "small"},
    }
    root = tmp_path_factory.mktemp("predictions-study")
    train_study_root(raw, tiny_dataset_root, root)
    return root


@pytest.fixture(scope="module")
def results(pretrained_root):
    return analysis.load_results(pretrained_root / RESULTS_DIR)


@pytest.fixture(scope="module")
def panel(pretrained_root, tiny_dataset_root, results):
    return predictions.prediction_panel(pretrained_root, tiny_dataset_root, results, device="cpu")


def test_the_representative_model_has_the_median_mean_loss(results, panel):
    means = results.group_by(pl.col("model_id").cast(pl.String)).agg(pl.col("loss").mean())
    assert means.height == 3
    ordered = means.sort("loss")
    assert panel.model_id == ordered["model_id"][1]  # the middle one of three
    assert panel.mean_loss == pytest.approx(ordered["loss"][1])
    assert panel.phase == "pretrain"


def test_each_domain_shows_its_first_validation_image_mask_and_a_probability_map(
    panel, tiny_dataset_root
):
    assert panel.split == "val"  # the tiny dataset has no test split
    assert [p.domain for p in panel.predictions] == DOMAINS
    for item in panel.predictions:
        truth = read_images(tiny_dataset_root, item.domain, split="val", n=1)
        np.testing.assert_array_equal(item.image, truth.images[0])
        np.testing.assert_array_equal(item.mask, truth.masks[0])
        assert item.probability.shape == item.image.shape
        assert np.isfinite(item.probability).all()
        assert item.probability.min() >= 0.0 and item.probability.max() <= 1.0


def framed_white_runs(grey: np.ndarray) -> set[int]:
    """Lengths of the runs of white (255) pixels framed by black (0) in a row."""
    runs = set()
    for row in grey:
        start = None
        for x, value in enumerate(row):
            if value == 255 and start is None:
                start = x
            elif value != 255 and start is not None:
                if start > 0 and row[start - 1] == 0 and value == 0:
                    runs.add(x - start)
                start = None
    return runs


def test_the_chart_has_a_row_per_image_kind_and_a_1_nm_scale_bar(panel, tiny_dataset_root):
    sampling = dataset_spec(tiny_dataset_root).simulation.output_sampling_angstrom
    length = round(10 / sampling)
    assert panel.scale_bar_px == length == 25
    rows = chart_spec(predictions.predictions_chart(panel))["data"]["values"]
    assert [(r["domain"], r["row"]) for r in rows] == [
        (d, kind) for d in DOMAINS for kind in ("image", "ground truth", "probability")
    ]
    for row in rows:
        assert row["scale_bar_px"] == length
        png = base64.b64decode(row["url"].removeprefix("data:image/png;base64,"))
        grey = np.asarray(Image.open(io.BytesIO(png)))
        assert grey.shape == panel.predictions[0].image.shape
        assert length in framed_white_runs(grey[grey.shape[0] // 2 :])


def test_the_subtitle_says_which_split_and_model(panel):
    title = chart_spec(predictions.predictions_chart(panel))["title"]
    subtitle = " ".join(title["subtitle"])
    assert panel.model_id in title["text"]
    assert "validation (the dataset has no test split)" in subtitle
    assert "1 nm = 25 px" in subtitle


def test_domains_are_spread_over_the_domain_order():
    domains = [str(d) for d in (-30, -20, -10, -5, 0, 5, 10, 20, 30)]
    assert predictions.spread_domains(domains, 6) == ["-30", "-10", "-5", "5", "10", "30"]
    assert predictions.spread_domains(["10", "-10", "0"], 6) == ["-10", "0", "10"]


def test_a_missing_checkpoint_gives_a_note_and_the_curves_still_draw(
    pretrained_root, tiny_dataset_root, results, panel, tmp_path
):
    root = tmp_path / "study"
    shutil.copytree(pretrained_root, root)
    shutil.rmtree(root / CHECKPOINT_DIR / panel.model_id)
    charts, notes = predictions.study_panels(root, results, tiny_dataset_root)
    assert list(charts) == ["learning_curves"]
    assert notes == [f"predictions not drawn: no checkpoint of {panel.model_id} at "
                     f"{root / CHECKPOINT_DIR / panel.model_id}"]  # fmt: skip


def test_a_bad_pixel_size_is_refused():
    with pytest.raises(ValueError, match="sampling_angstrom must be > 0"):
        predictions.scale_bar_px(0.0)
