"""The prediction panel: per evaluation domain, a held-out image, its mask and a model's map.

The representative model is the one of a phase (``pretrain``: only pretraining
checkpoints are kept by default) whose mean loss over the evaluation domains is the
median of the phase (:func:`median_model`). Its checkpoint
(``<study root>/checkpoints/<model_id>/``) is loaded with
:func:`hrtem_ray.learning.train.load_checkpoint` and run with
:func:`hrtem_ray.learning.train.predict` on the first test image of each shown domain
(the validation image when the dataset has no test split, :func:`prediction_split`).
Each image carries a 1 nm scale bar (:func:`scale_bar_px`, from the dataset's
``simulation.output_sampling_angstrom``).

torch is imported only when a panel is computed: the module itself stays light.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import altair as alt
import numpy as np
import polars as pl

from hrtem_ray.analysis import domain_order
from hrtem_ray.report.curves import LOSS_UNIT, learning_curves
from hrtem_ray.report.images import PANEL, grey_levels, png_url
from hrtem_ray.report.vega import axis_title
from hrtem_ray.store import storage
from hrtem_ray.store.layout import CHECKPOINT_DIR

log = logging.getLogger(__name__)

#: At most this many domains are shown (spread evenly over the domain order).
PREDICTION_DOMAINS = 6
#: Length of the scale bar.
SCALE_BAR_NM = 1.0
#: Rows of the panel, top to bottom.
ROWS = ("image", "ground truth", "probability")


@dataclass(frozen=True)
class DomainPrediction:
    """One column of the panel: a domain's image, its mask and the model's probability map."""

    domain: str
    image: np.ndarray
    mask: np.ndarray
    probability: np.ndarray


@dataclass(frozen=True)
class PredictionPanel:
    """What the prediction panel shows, and of which model and images."""

    model_id: str
    phase: str
    mean_loss: float
    split: str
    sampling_angstrom: float
    predictions: list[DomainPrediction] = field(default_factory=list)

    @property
    def scale_bar_px(self) -> int:
        """Length of the :data:`SCALE_BAR_NM` scale bar in image pixels."""
        return scale_bar_px(self.sampling_angstrom)


def spread_domains(domains: Sequence[str], k: int) -> list[str]:
    """At most ``k`` of ``domains``, spread evenly over their domain order (ends included).

    >>> spread_domains(["-20", "-10", "0", "10", "20"], 3)
    ['-20', '0', '20']
    """
    ordered = domain_order(domains)
    if len(ordered) <= k:
        return ordered
    if k == 1:
        return ordered[:1]
    step = (len(ordered) - 1) / (k - 1)
    return [ordered[int(i * step + 0.5)] for i in range(k)]


def scale_bar_px(sampling_angstrom: float, length_nm: float = SCALE_BAR_NM) -> int:
    """Pixels of a ``length_nm`` scale bar at ``sampling_angstrom`` per pixel (rounded).

    >>> scale_bar_px(0.4)
    25
    """
    if not sampling_angstrom > 0:
        raise ValueError(f"sampling_angstrom must be > 0, got {sampling_angstrom}")
    return max(1, round(10.0 * length_nm / sampling_angstrom))


def with_scale_bar(grey: np.ndarray, length_px: int) -> np.ndarray:
    """A copy of a 0-255 grey image with a white bar of ``length_px`` at the bottom left.

    The bar is 2 px thick (at least 1/32 of the image height) and framed by 1 px of
    black, so that it shows on any background; a bar longer than the image is clipped.
    """
    out = np.array(grey, dtype=np.float64)
    height, width = out.shape
    thick = max(2, height // 32)
    margin = max(2, width // 16)
    top = height - margin - thick
    left, right = margin, min(margin + length_px, width - 1)
    out[max(top - 1, 0) : top + thick + 1, left - 1 : right + 1] = 0.0
    out[top : top + thick, left:right] = 255.0
    return out


def median_model(results: pl.DataFrame, phase: str = "pretrain") -> tuple[str, float]:
    """The model of ``phase`` whose mean ``loss`` over its evaluation domains is the median.

    With an even number of models, the lower of the two middle ones; ties by
    ``model_id``.

    Raises
    ------
    ValueError
        If ``results`` has no ``model_id`` column or no model of ``phase``.
    """
    if "model_id" not in results.columns:
        raise ValueError("the results table has no model_id column")
    means = (
        results.filter(pl.col("phase").cast(pl.String) == phase)
        .group_by(pl.col("model_id").cast(pl.String))
        .agg(mean_loss=pl.col("loss").mean())
        .drop_nulls("mean_loss")
        .sort("mean_loss", "model_id")
    )
    if means.is_empty():
        raise ValueError(f"no {phase} model with a loss in the results table")
    model_id, mean_loss = means.row((means.height - 1) // 2)
    return model_id, float(mean_loss)


def prediction_split(data_dir: str | os.PathLike[str]) -> tuple[str, float]:
    """The split the panel shows (``test``, or ``val`` without test images) and the pixel
    size in Å, from the dataset's spec."""
    from hrtem_ray.dataset.manifest import dataset_spec

    spec = dataset_spec(data_dir)
    split = "test" if spec.n_structures.test > 0 else "val"
    return split, float(spec.simulation.output_sampling_angstrom)


def _load_model(study_root: str, model_id: str):
    """The model of a study's checkpoint (copied to a local folder first when remote)."""
    from hrtem_ray.learning.train import load_checkpoint

    location = storage.join(study_root, CHECKPOINT_DIR, model_id)
    if not storage.exists(storage.join(location, "metadata.json")):
        raise FileNotFoundError(f"no checkpoint of {model_id} at {location}")
    if storage.is_local(location):
        return load_checkpoint(storage.local_path(location))[0]
    with tempfile.TemporaryDirectory(prefix="hrtem-report-ckpt-") as tmp:
        storage.download_dir(location, tmp)
        return load_checkpoint(tmp)[0]


def prediction_panel(
    study_root: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    results: pl.DataFrame,
    phase: str = "pretrain",
    *,
    device: str | None = None,
) -> PredictionPanel:
    """Predict the first held-out image of each shown evaluation domain with the median model.

    Parameters
    ----------
    study_root
        Study root holding ``checkpoints/<model_id>/``.
    data_dir
        Dataset root.
    results
        The results table: its models (:func:`median_model`) and ``eval_domain`` values
        (at most :data:`PREDICTION_DOMAINS`, :func:`spread_domains`).
    phase
        Phase of the representative model.
    device
        Torch device (default: :func:`hrtem_ray.learning.train.select_device`).

    Raises
    ------
    FileNotFoundError
        The model's checkpoint is missing.
    Exception
        Whatever reading the dataset or loading the checkpoint raises.
    """
    from hrtem_ray.dataset.readers import read_images
    from hrtem_ray.learning.train import predict

    model_id, mean_loss = median_model(results, phase)
    split, sampling = prediction_split(data_dir)
    model = _load_model(os.fspath(study_root), model_id)
    domains = results.get_column("eval_domain").cast(pl.String).unique().to_list()
    shown = []
    for domain in spread_domains(domains, PREDICTION_DOMAINS):
        selection = read_images(data_dir, domain, split=split, n=1)
        probability = predict(model, selection.images, device=device)[0]
        shown.append(DomainPrediction(domain, selection.images[0], selection.masks[0], probability))
    return PredictionPanel(model_id, phase, mean_loss, split, sampling, shown)


def predictions_chart(panel: PredictionPanel, study: str = "defocus") -> alt.Chart:
    """The panel as a chart: one column per domain, rows :data:`ROWS`, each with a scale bar.

    The image is scaled 1-99 percentile, mask and probability 0 (black) to 1 (white).
    """
    length = panel.scale_bar_px
    rows = []
    for item in panel.predictions:
        for row, array, robust in zip(
            ROWS, (item.image, item.mask, item.probability), (True, False, False), strict=True
        ):
            url = png_url(with_scale_bar(grey_levels(array, robust), length))
            rows.append({"domain": item.domain, "row": row, "url": url, "scale_bar_px": length})
    chart = (
        alt.Chart(alt.Data(values=rows))
        .mark_image(width=PANEL, height=PANEL)
        .encode(
            x=alt.X(
                "domain:O",
                sort=domain_order([p.domain for p in panel.predictions]),
                title=axis_title(study),
                axis=alt.Axis(orient="top", labelAngle=0),
            ),
            y=alt.Y("row:O", sort=list(ROWS), title=None),
            url="url:N",
        )
        .properties(width=alt.Step(PANEL + 8), height=alt.Step(PANEL + 8))
    )
    split = "test" if panel.split == "test" else "validation (the dataset has no test split)"
    return chart.properties(
        title=alt.Title(
            f"Predictions of {panel.model_id} next to the truth",
            subtitle=[
                f"the {panel.phase} model with the median mean loss over the evaluation "
                f"domains: {panel.mean_loss:.3g}, {LOSS_UNIT}; first {split} image of each domain",
                f"image scaled 1-99 percentile; mask and particle probability 0 (black) to "
                f"1 (white); scale bar {SCALE_BAR_NM:g} nm = {length} px of "
                f"{panel.sampling_angstrom:g} Å",
            ],
            anchor="start",
        )
    )


def study_panels(
    study_root: str | os.PathLike[str],
    results: pl.DataFrame,
    data_dir: str | os.PathLike[str] | None,
    study: str = "defocus",
) -> tuple[dict[str, alt.TopLevelMixin], list[str]]:
    """The learning curves and (with a dataset) the prediction panel of a study root.

    Returns the charts (``learning_curves``, ``predictions``) that could be drawn and a
    note on each that could not: a missing or damaged history or checkpoint never
    stops the report (it is logged as a warning).
    """
    charts: dict[str, alt.TopLevelMixin] = {}
    notes: list[str] = []
    try:
        chart, curve_notes = learning_curves(study_root, results)
        notes += curve_notes
        if chart is not None:
            charts["learning_curves"] = chart
    except Exception as error:  # a damaged history must not stop the report
        log.warning("learning curves not drawn: %s", error)
        notes.append(f"learning curves not drawn: {error}")
    if data_dir is None:
        return charts, notes
    try:
        charts["predictions"] = predictions_chart(
            prediction_panel(study_root, data_dir, results), study
        )
    except Exception as error:  # a missing checkpoint or dataset must not stop the report
        log.warning("predictions not drawn: %s", error)
        notes.append(f"predictions not drawn: {error}")
    return charts, notes
