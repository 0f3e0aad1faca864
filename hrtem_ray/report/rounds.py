"""The report's view of an adaptive study: each finding's interval narrowing round by round.

An adaptive study stores its rounds as ``<study_root>/adaptive/round-NNN.json``
(:mod:`hrtem_ray.sweep.rounds`). :func:`rounds_table` turns them into one row per round
and targeted finding; :func:`rounds_chart` draws, per finding, its interval at each
round's level against the models trained so far, with the edges of the claim's range.
"""

from __future__ import annotations

import logging
import os

import altair as alt
import polars as pl

from hrtem_ray.analysis.findings import REGIONS
from hrtem_ray.store import storage
from hrtem_ray.store.layout import ADAPTIVE_DIR

log = logging.getLogger(__name__)

#: Columns of :func:`rounds_table`.
ROUND_COLUMNS = {
    "round": pl.Int64,
    "finding": pl.String,
    "estimate": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "level": pl.Float64,
    "verdict": pl.String,
    "final_verdict": pl.String,
    "decided_round": pl.Int64,
    "trainings": pl.Int64,
    "trainings_added_for_it": pl.Int64,
    "cpu_hours": pl.Float64,
    "gpu_hours": pl.Float64,
}


def read_rounds(study_root: str | os.PathLike[str]) -> list[dict]:
    """The round records of an adaptive study, in order (none for other studies)."""
    folder = storage.join(os.fspath(study_root), ADAPTIVE_DIR)
    try:
        if not storage.exists(folder):
            return []
        names = sorted(
            n for n in storage.listdir(folder) if n.rsplit("/", 1)[-1].startswith("round-")
        )
        return [storage.read_json(storage.join(folder, n.rsplit("/", 1)[-1])) for n in names]
    except (OSError, ValueError) as error:  # the report works without them
        log.warning("adaptive rounds of %s unreadable: %s", study_root, error)
        return []


def rounds_table(records: list[dict]) -> pl.DataFrame:
    """One row per round and targeted finding (:data:`ROUND_COLUMNS`).

    ``level``: the round's look level (``1 - look_alpha``); ``verdict``: at that look;
    ``final_verdict`` and ``decided_round``: as decided by then; ``trainings``: models
    trained up to the round; ``trainings_added_for_it``: the trainings earlier rounds
    added for that finding (an addition serving several findings counts for each).
    """
    rows, spent = [], {}
    for record in records:
        for finding in record["findings"]:
            key = finding["finding"]
            rows.append({
                "round": record["round"], "finding": key, "estimate": finding["estimate"],
                "ci_low": finding["ci_low"], "ci_high": finding["ci_high"],
                "level": 1 - record["look_alpha"], "verdict": finding["verdict"],
                "final_verdict": finding["final_verdict"],
                "decided_round": finding["decided_round"], "trainings": record["trainings"],
                "trainings_added_for_it": spent.get(key, 0), "cpu_hours": record["cpu_hours"],
                "gpu_hours": record["gpu_hours"],
            })  # fmt: skip
        for added in record["added"]:
            for key in added["for"]:
                spent[key] = spent.get(key, 0) + added["trainings"]
    return pl.DataFrame(rows, schema=ROUND_COLUMNS)


def rounds_chart(table: pl.DataFrame, study: str) -> alt.TopLevelMixin:
    """Per finding: its interval at each round against the models trained so far.

    Points are the estimates, bars the intervals at the round's level, coloured by the
    verdict reached by then; dashed lines mark the edges of the claim's range.
    """
    rows = []
    for row in table.to_dicts():
        edges = [e for e in REGIONS[row["finding"]] if abs(e) != float("inf")]
        rows.append({**row, "edge": edges[0], "edge_2": edges[1] if len(edges) > 1 else None})
    x = alt.X("trainings:Q", title="models trained so far")
    color = alt.Color("final_verdict:N", title="verdict by then",
                      scale=alt.Scale(domain=["agrees", "disagrees", "undecidable"],
                                      range=["#1b7837", "#b2182b", "#888888"]))  # fmt: skip
    tooltip = ["finding:N", "round:O", "estimate:Q", "ci_low:Q", "ci_high:Q", "level:Q",
               "verdict:N", "trainings:Q", "trainings_added_for_it:Q"]  # fmt: skip
    base = alt.Chart()
    bars = base.mark_rule(strokeWidth=2).encode(
        x=x, y=alt.Y("ci_low:Q", title="measure"), y2="ci_high:Q", color=color, tooltip=tooltip
    )
    points = base.mark_point(filled=True).encode(x=x, y="estimate:Q", color=color, tooltip=tooltip)
    edges = [base.mark_rule(strokeDash=[4, 3], color="black").encode(y=f"{c}:Q")
             for c in ("edge", "edge_2")]  # fmt: skip
    return (
        alt.layer(bars, points, *edges, data=alt.Data(values=rows))
        .properties(width=220, height=160)
        .facet(facet=alt.Facet("finding:N", title=f"{study}: finding"), columns=3)
        .resolve_scale(y="independent")
        .properties(title="Adaptive rounds: each finding's interval narrowing")
    )
