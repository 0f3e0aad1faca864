"""The report page from its templates: values escaped, templates shipped as package data."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import polars as pl
import tomllib

from hrtem_ray.report import page
from hrtem_ray.report.sentences import Finding

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "<script>alert('x')</script>"


def _section() -> page.StudySection:
    """A section without charts whose every shown value holds markup."""
    finding = Finding(f"{HOSTILE}?", "a < b & c", True, f"ref {HOSTILE}", False)
    return page.StudySection(
        study=f"s{HOSTILE}",
        charts={},
        tables={"pair_matrix": pl.DataFrame()},
        choices={"reduce": ["median", "mean"], "freeze": ["all", HOSTILE]},
        summary=pl.DataFrame({"phase": [HOSTILE], "models": [3]}),
        notes=[f"note {HOSTILE}"],
        findings={"asymmetry": [finding]},
        verdicts=pl.DataFrame(
            {
                "finding": ["1"],
                "claim": [HOSTILE],
                "measure": ["m"],
                "estimate": [0.5],
                "ci_low": [None],
                "ci_high": [None],
                "n_models": [3],
                "verdict": ["undecidable"],
                "reason": [f"why {HOSTILE}"],
            },
            schema_overrides={"ci_low": pl.Float64, "ci_high": pl.Float64},
        ),  # fmt: skip
        banners=[f"banner {HOSTILE}"],
    )


def test_every_value_is_escaped_and_the_structure_kept():
    html = page.render_page([_section()], {}, source=f"dir/{HOSTILE}", notes=[HOSTILE])
    assert HOSTILE not in html
    # study x 2 headings + 2 data-study, claim, reason, banner, 2 notes, source, option x 2,
    # summary
    assert html.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") == 13
    assert '<tr class="finding-row undecidable" data-finding="1">' in html
    assert "<td>0.5</td>" in html  # an estimate without an interval
    assert '<option value="median" selected>median</option>' in html
    assert 'data-param="sel_freeze"' in html and 'data-param="sel_n_transfer"' not in html
    key = _section().key
    assert f'id="findings-{key}"' in html and f'href="tables/{key}_pair_matrix.csv"' in html
    assert html.index('class="study-notes"') < html.index('class="meta"')


def test_chart_specs_cannot_close_their_script_element():
    spec = page.script_json({"title": "</script><b>"})
    assert "</" not in spec and spec == '{"title":"<\\/script><b>"}'


def test_the_templates_are_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["hrtem_ray.report"]
    folder = REPO / "hrtem_ray" / "report" / "templates"
    files = [p.relative_to(folder.parent).as_posix() for p in folder.iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in files), files
    loaded = page.environment().list_templates()
    assert {"page.html.j2", "study.html.j2", "page.css", "page.js"} <= set(loaded)
