"""The report's view of an adaptive study: intervals per round and the compute spent on them."""

from __future__ import annotations

import json

import polars as pl
import vl_convert as vlc

from hrtem_ray.report.rounds import ROUND_COLUMNS, read_rounds, rounds_chart, rounds_table
from hrtem_ray.report.vega import chart_spec
from hrtem_ray.sweep.adaptive import Budget
from hrtem_ray.sweep.replay import TRUE_EFFECTS, SyntheticStudy, replay


def _records():
    study = SyntheticStudy(TRUE_EFFECTS, seed=3)
    return replay(study.design(), study.table, ["2a", "3", "5a"], budget=Budget(200), batch=2,
                  n_boot=300)  # fmt: skip


def test_one_row_per_round_and_finding_with_the_trainings_added_for_it(tmp_path):
    records = _records()
    assert len(records) >= 2
    table = rounds_table(records)
    assert table.schema == pl.Schema(ROUND_COLUMNS)
    assert table.height == 3 * len(records)
    first = table.filter(pl.col("round") == 1)
    assert first.get_column("trainings_added_for_it").to_list() == [0, 0, 0]
    for key in ("2a", "3", "5a"):
        added = sum(a["trainings"] for r in records[:-1] for a in r["added"] if key in a["for"])
        last = table.filter((pl.col("finding") == key) & (pl.col("round") == len(records)))
        assert last.get_column("trainings_added_for_it").item() == added
    # the stored files read back as the records
    (tmp_path / "adaptive").mkdir()
    for record in records:
        (tmp_path / "adaptive" / f"round-{record['round']:03d}.json").write_text(json.dumps(record))
    assert read_rounds(tmp_path) == records
    assert read_rounds(tmp_path / "elsewhere") == []


def test_the_chart_renders_with_the_claims_edges():
    spec = chart_spec(rounds_chart(rounds_table(_records()), "defocus"))
    assert "edge" in json.dumps(spec)
    assert vlc.vegalite_to_svg(spec).startswith("<svg")
