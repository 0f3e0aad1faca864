"""Tests of the HTML report: files written, and the page rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
import vl_convert as vlc

from hrtem_ray import analysis
from hrtem_ray.report import build, reference_plots, sentences, vega
from hrtem_ray.spec.names import is_safe_name

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


# ----------------------------------------------------------------------------- fast checks
def _results(tmp_path: Path) -> Path:
    """A small results directory in the contract's schema (2 domains, every phase)."""
    rows = []
    models = [
        ("p0", "pretrain", "0", None, None, None, "none", (0.30, 0.50)),
        ("p5", "pretrain", "5", None, None, None, "none", (0.80, 0.20)),
        ("t05", "transfer", "0", "5", 1e-4, 64, "none", (0.50, 0.15)),
        ("t05e", "transfer", "0", "5", 1e-4, 64, "encoder", (0.55, 0.18)),
        ("t50", "transfer", "5", "0", 1e-4, 64, "none", (0.32, 0.40)),
        ("b", "baseline", "0", "5", None, 32, "none", (0.33, 0.22)),
    ]
    for model_id, phase, a, b, tlr, n_tr, freeze, losses in models:
        for eval_domain, loss in zip(("0", "5"), losses, strict=True):
            rows.append(
                {"study": "defocus", "model_id": model_id, "phase": phase, "parent_id": None,
                 "pretrain_domain": a, "transfer_domain": b, "eval_domain": eval_domain,
                 "pretrain_lr": 1e-3, "transfer_lr": tlr, "n_pretrain": 64, "n_transfer": n_tr,
                 "freeze": freeze, "seed": 0, "epochs": 2, "loss": loss,
                 "cross_entropy": loss + 0.3, "iou": 0.5, "best_epoch": 1,
                 "train_seconds": 1.0, "config_hash": model_id, "hrtem_ray_version": "test"}
            )  # fmt: skip
    directory = tmp_path / "results"
    directory.mkdir()
    pl.DataFrame(rows).write_parquet(directory / "part-0.parquet")
    return directory


def test_write_report_files(tmp_path):
    path = build.write_report(_results(tmp_path), tmp_path / "report", data_dir=tmp_path / "no")
    assert path == tmp_path / "report" / "report.html"
    page = path.read_text()
    # self-contained: the libraries are inlined, nothing is loaded from the network
    assert "vegaEmbed" in page and not re.search(r"<script[^>]+src=", page)
    for name in ("pair_matrix", "ood_spread", "asymmetry", "baseline", "hyperparameters"):
        assert f'id="chart-defocus_{name}"' in page
        for suffix in ("png", "svg"):
            figure = tmp_path / "report" / "figures" / f"defocus_{name}.{suffix}"
            assert figure.stat().st_size > 1000
    assert "example images unavailable" in page or "no example images" in page
    csv = pl.read_csv(tmp_path / "report" / "tables" / "defocus_pair_matrix.csv")
    transfer = csv.filter(pl.col("phase") == "transfer")
    expected = analysis.pair_matrix(analysis.load_results(tmp_path / "results"), "transfer")
    assert transfer.get_column("loss").to_list() == pytest.approx(expected["loss"].to_list())
    every = pl.read_csv(tmp_path / "report" / "tables" / "defocus_pair_matrix_all_selections.csv")
    assert {"sel_reduce", "sel_freeze", "sel_n_transfer"} <= set(every.columns)


def _rename(directory: Path, **values: str) -> Path:
    """The results table of ``directory`` with label columns replaced by ``values``."""
    table = pl.read_parquet(directory / "part-0.parquet")
    replace = {"0": values.get("domain", "0")}
    table = table.with_columns(
        study=pl.lit(values.get("study", "defocus")),
        pretrain_domain=pl.col("pretrain_domain").replace(replace),
        transfer_domain=pl.col("transfer_domain").replace(replace),
        eval_domain=pl.col("eval_domain").replace(replace),
    )
    table.write_parquet(directory / "part-0.parquet")
    return directory


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("study", ["../../x", ".hidden/.."])
def test_names_from_the_table_cannot_leave_the_output_dir(tmp_path, study):
    results = _rename(_results(tmp_path), study=study, domain="../y")
    out = tmp_path / "deep" / "er" / "report"
    before = _files_under(tmp_path)
    path = build.write_report(results, out)
    written = _files_under(tmp_path) - before
    assert written and all(out in f.parents for f in written), sorted(written)
    key = build.unique_safe_names([study])[study]
    assert is_safe_name(key) and ".." not in key and "/" not in key and not key.startswith(".")
    assert (out / "figures" / f"{key}_pair_matrix.svg").stat().st_size > 1000
    assert (out / "tables" / f"{key}_pair_matrix.csv").is_file()
    page = path.read_text()
    assert f'id="chart-{key}_pair_matrix"' in page
    assert "../y" in pl.read_csv(out / "tables" / f"{key}_pair_matrix.csv")["target_domain"]


@pytest.mark.slow
def test_distinct_studies_with_the_same_safe_name_get_distinct_files(tmp_path):
    first = _rename(_results(tmp_path), study="a/b")
    second = pl.read_parquet(first / "part-0.parquet").with_columns(study=pl.lit("a_b"))
    second.write_parquet(first / "part-1.parquet")
    build.write_report(first, tmp_path / "out")
    svgs = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*_pair_matrix.svg"))
    assert svgs == ["a_b-2_pair_matrix.svg", "a_b_pair_matrix.svg"]


def test_unique_safe_names_are_safe_and_distinct_without_case():
    long = "a" * 200
    names = build.unique_safe_names([long, long.upper(), "x/y", "X_Y", "..", ""])
    assert len(set(n.lower() for n in names.values())) == len(names)
    assert all(is_safe_name(n) for n in names.values()), names
    assert names[long.upper()].endswith("-2") and names["X_Y"] == "X_Y-2"


def test_output_path_stays_inside(tmp_path):
    assert build.output_path(tmp_path, "figures", "a.svg") == tmp_path / "figures" / "a.svg"
    for parts in (("..", "x.svg"), ("figures", "../../x.svg"), ("/etc/passwd",)):
        with pytest.raises(build.ReportError, match="outside the report directory"):
            build.output_path(tmp_path, *parts)


def test_nothing_is_created_before_the_input_is_checked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(build.ReportError, match="no results yet"):
        build.write_report(empty, tmp_path / "out")
    not_results = tmp_path / "shards"
    not_results.mkdir()
    pl.DataFrame({"image": [1.0]}).write_parquet(not_results / "x.parquet")
    with pytest.raises(build.ReportError, match="not a results table.*phase"):
        build.write_report(not_results, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_notes_are_shown_at_the_top_of_the_report(tmp_path):
    table = analysis.load_results(_results(tmp_path))
    notes = ["partial: 5 of 6 models", "ignored 3 rows of 1 models from other configurations"]
    page = build.write_report(table, tmp_path / "out", notes=notes).read_text()
    top = page.split('class="meta"', 1)[0]
    assert all(note in top for note in notes)
    assert "partial:" not in build.write_report(table, tmp_path / "plain").read_text()


def test_default_selection_picks_median_and_all():
    table = pl.DataFrame(
        {
            "sel_reduce": ["median", "mean", "median"],
            "sel_freeze": ["all", "all", "none"],
            "x": [1, 2, 3],
        }
    )
    assert vega.default_selection(table).to_dict(as_series=False) == {"x": [1]}


# ----------------------------------------------------------------------------- intervals, findings
HARD_IN_FOCUS = {"0": 0.30, "5": 0.10, "10": 0.12}  # the reference study's pattern
HARD_OUT_OF_FOCUS = {"0": 0.06, "5": 0.30, "10": 0.12}  # in focus is the easiest


def _seeded_results(tmp_path: Path, hardness: dict[str, float], baselines: bool = True) -> Path:
    """A results directory with 3 seeds per configuration, so that intervals exist.

    The loss of every model on an eval domain is ``hardness[eval]`` plus a penalty
    for training on another domain (large for pretrain models of ``"5"``, which
    makes transfers from ``"5"`` markedly worse than the reverse: a significant
    asymmetry) plus a small seed-dependent term.
    """
    domains = list(hardness)
    rows = []

    def add(model_id, phase, a, b, n_pre, n_tr, seed, penalty):
        for e in domains:
            loss = hardness[e] + penalty(e) + 0.002 * seed
            rows.append(
                {"study": "defocus", "model_id": model_id, "phase": phase, "parent_id": None,
                 "pretrain_domain": a, "transfer_domain": b, "eval_domain": e,
                 "pretrain_lr": 1e-3, "transfer_lr": None if phase != "transfer" else 1e-4,
                 "n_pretrain": n_pre, "n_transfer": n_tr, "freeze": "none", "seed": seed,
                 "epochs": 2, "loss": loss, "cross_entropy": loss + 0.3, "iou": 0.5,
                 "best_epoch": 1, "train_seconds": 1.0, "config_hash": model_id,
                 "hrtem_ray_version": "test"}
            )  # fmt: skip

    for seed in range(3):
        for a in domains:
            far = 0.2 if a == "5" else 0.05
            add(
                f"p{a}-{seed}",
                "pretrain",
                a,
                None,
                64,
                None,
                seed,
                lambda e, a=a, f=far: f * (e != a),
            )
            for b in domains:
                if b != a:
                    carry = 0.08 if a == "5" else 0.0
                    add(f"t{a}{b}-{seed}", "transfer", a, b, 64, 16, seed,
                        lambda e, b=b, c=carry: c + 0.03 * (e != b))  # fmt: skip
        if baselines:
            add(f"b-{seed}", "baseline", "0", "10", 48, 16, seed, lambda e: 0.01)
    directory = tmp_path / "results"
    directory.mkdir()
    pl.DataFrame(rows).write_parquet(directory / "part-0.parquet")
    return directory


def _findings_block(page: str) -> str:
    start = page.index('<section class="findings"')
    return page[start : page.index("</section>", start)]


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


def _spec(page: str, key: str) -> dict:
    """The Vega-Lite spec of a chart, as embedded in the page."""
    match = re.search(rf'<script type="application/json" id="spec-{key}">(.*?)</script>', page)
    return json.loads(match.group(1).replace("<\\/", "</"))


def _walk(node):
    """Every dict inside a spec."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _verdict_rows(block: str) -> dict[str, str]:
    """Finding key -> verdict, as the findings block shows them."""
    rows = re.findall(r'<tr class="finding-row (\w+)" data-finding="(\w+)">', block)
    return {key: verdict for verdict, key in rows}


def test_findings_block_states_every_finding_once_with_its_replicate_verdict(tmp_path):
    results = _seeded_results(tmp_path, HARD_IN_FOCUS)
    page = build.write_report(results, tmp_path / "out").read_text()
    block = _findings_block(page)
    assert page.index(block) < page.index("<h2>Study:"), "findings must open the report"
    expected = analysis.findings(analysis.load_results(results), ci=0.95, n_boot=1000)
    shown = _verdict_rows(block)
    assert list(shown) == expected["finding"].to_list()  # every finding once, in order
    assert shown == dict(zip(expected["finding"], expected["verdict"], strict=True))
    assert shown["2a"] == "agrees"  # 3 seeds per configuration decide the hardest domain
    text = _text(block)
    assert "the selectors below change the charts, not these verdicts" in text
    # the interval the verdicts rest on, named as analysis.findings computes it
    assert "95% Student t intervals" in text and "percentile" not in text
    row = expected.filter(pl.col("finding") == "2a").row(0, named=True)
    assert f"{row['estimate']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]" in text
    # the sentences under the charts are generated from the tables, with their intervals
    figures = _text(page[page.index("<h2>Study:") :])
    summary = pl.concat(
        analysis.asymmetry_summary(analysis.load_results(results), d, ci=0.95)
        for d in HARD_IN_FOCUS
    ).sort("ood_from_domain")
    best = summary.row(0, named=True)
    assert f"Models pretrained on {best['domain']} nm have the lowest" in figures
    assert f"{best['ood_from_domain']:.3g} [95% CI" in figures
    assert "The hardest domain is 0 nm" in figures
    # a sentence citing the reference study shows the replicate verdict, never its own
    assert "Verdict on replicates (findings block): finding 2a: agrees." in figures
    assert "This study's data agree" not in page
    assert "Finding 2" not in page and "Finding 1" not in page


def test_report_says_when_the_data_disagree_with_the_reference_study(tmp_path):
    results = _seeded_results(tmp_path, HARD_OUT_OF_FOCUS)
    page = build.write_report(results, tmp_path / "out").read_text()
    assert _verdict_rows(_findings_block(page))["2a"] == "disagrees"
    hardest = next(
        f for f in re.findall(r'<div class="finding".*?</div>', page)
        if "Is the in-focus domain the hardest?" in f
    )  # fmt: skip
    assert "The hardest domain is 5 nm" in _text(hardest)
    assert 'class="reference disagree"' in hardest
    assert "finding 2a: disagrees" in _text(hardest)


def test_a_table_without_replicates_decides_nothing_and_says_why(tmp_path):
    results = _seeded_results(tmp_path, HARD_IN_FOCUS)
    one_seed = pl.read_parquet(results / "part-0.parquet").filter(pl.col("seed") == 0)
    page = build.write_report(one_seed, tmp_path / "out").read_text()
    block = _findings_block(page)
    assert set(_verdict_rows(block).values()) == {"undecidable"}
    assert "no replicates" in _text(block)
    assert "Scored on the validation images used for model selection" in _text(block)


def test_transfer_vs_mixture_without_baselines_says_it_cannot_compare(tmp_path):
    results = _seeded_results(tmp_path, HARD_IN_FOCUS, baselines=False)
    page = build.write_report(results, tmp_path / "out").read_text()
    assert "the comparison cannot be made from this table" in _text(page)
    assert _verdict_rows(_findings_block(page))["3"] == "undecidable"
    assert "no baseline" in _text(_findings_block(page))


def test_banners_mark_a_study_that_did_not_converge(tmp_path):
    results = pl.read_parquet(_seeded_results(tmp_path, HARD_IN_FOCUS) / "part-0.parquet")
    half = results.with_columns(
        converged=pl.col("model_id").str.ends_with("-0"),  # 1 of 3 seeds converged
        patience=pl.lit(3),
        eval_split=pl.lit("test"),
    )
    (banner,) = sentences.protocol_banners(half)
    assert banner.startswith("Not converged: only") and "33% of pretrain models" in banner
    assert sentences.protocol_banners(half.with_columns(converged=pl.lit(True))) == []
    # not judged (no patience): no banner; scored on val: the validation banner
    assert sentences.protocol_banners(half.with_columns(converged=pl.lit(None))) == []
    (on_val,) = sentences.protocol_banners(
        half.with_columns(converged=pl.lit(True)).drop("eval_split")
    )
    assert on_val.startswith("Scored on the validation images used for model selection")


def test_heatmap_tooltips_carry_the_interval_and_the_number_of_models(tmp_path):
    page = build.write_report(_seeded_results(tmp_path, HARD_IN_FOCUS), tmp_path / "out")
    page = page.read_text()
    expected = {
        "pair_matrix": {"loss_ci_low", "loss_ci_high", "n_models"},
        "ood_spread": {"shift_ci_low", "shift_ci_high", "n_models"},
        "asymmetry": {"asymmetry_ci_low", "asymmetry_ci_high", "n_models"},
    }
    for chart, fields in expected.items():
        spec = _spec(page, f"defocus_{chart}")
        rects = [
            n for n in _walk(spec)
            if n.get("mark") in ("rect", {"type": "rect"}) and "tooltip" in n.get("encoding", {})
        ]  # fmt: skip
        assert rects, chart
        shown = {t["field"] for r in rects for t in r["encoding"]["tooltip"]}
        assert fields <= shown, (chart, shown)
        # ... and the embedded rows hold those values (not all null)
        data = [row for rows in spec["datasets"].values() for row in rows]
        for field in fields:
            assert any(row.get(field) is not None for row in data), (chart, field)


def test_significant_asymmetry_cells_are_marked(tmp_path):
    results = _seeded_results(tmp_path, HARD_IN_FOCUS)
    out = tmp_path / "out"
    page = build.write_report(results, out).read_text()
    expected = analysis.transfer_asymmetry(analysis.load_results(results), ci=0.95)
    expected = expected.with_columns(analysis.significant(expected, "asymmetry"))
    marked = expected.filter("asymmetry_significant")
    assert 0 < marked.height < expected.height  # the hand-made table has both kinds
    spec = _spec(page, "defocus_asymmetry")
    default = [
        row for row in spec["datasets"]["asymmetry"]
        if all(row.get(k, v) == v for k, v in (("sel_reduce", "median"), ("sel_freeze", "all")))
    ]  # fmt: skip
    flagged = {
        (r["pretrain_domain"], r["target_domain"]) for r in default if r["asymmetry_significant"]
    }
    assert flagged == set(marked.select("pretrain_domain", "target_domain").iter_rows())
    outline = [n for n in _walk(spec) if str(n.get("name")).startswith("significant_asymmetry")]
    assert outline and outline[0]["transform"][-1] == {"filter": "datum.asymmetry_significant"}
    # the static figure draws one outlined cell per significant pair
    svg = (out / "figures" / "defocus_asymmetry.svg").read_text()
    group = re.search(
        r'<g class="mark-rect role-mark significant_asymmetry[^"]*"[^>]*>(.*?)</g>', svg
    )
    assert group and group.group(1).count("<path") == marked.height


def test_bar_and_line_charts_draw_error_bars(tmp_path):
    out = tmp_path / "out"
    build.write_report(_seeded_results(tmp_path, HARD_IN_FOCUS), out)
    for chart in ("asymmetry", "baseline", "hyperparameters", "ood_spread"):
        svg = (out / "figures" / f"defocus_{chart}.svg").read_text()
        bars = re.findall(r'<g class="mark-rule role-mark errorbar_[^"]*"[^>]*>(.*?)</g>', svg)
        assert bars and sum(b.count("<line") for b in bars) > 0, chart


def test_selection_tables_carry_intervals_for_every_selection(tmp_path):
    table = analysis.load_results(_seeded_results(tmp_path, HARD_IN_FOCUS))
    tables, _ = analysis.selection_tables(table, ci=0.95, n_boot=200)
    pairs = vega.default_selection(tables["pair_matrix"]).filter(pl.col("phase") == "transfer")
    public = analysis.pair_matrix(table, "transfer", ci=0.95, n_boot=200)
    assert pairs.get_column("n_models").to_list() == public.get_column("n_models").to_list()
    # same statistic, independent bootstrap streams: close, not identical
    for bound in ("loss_ci_low", "loss_ci_high"):
        assert pairs[bound].to_list() == pytest.approx(public[bound].to_list(), abs=0.01)
    for name, frame in tables.items():
        assert "n_models" in frame.columns, name
        assert any(c.endswith("_ci_low") for c in frame.columns), name


# ----------------------------------------------------------------------------- G_OOD, time, Fig 7.2
def test_report_shows_generalization_gap_training_time_and_figure_7_2(tmp_path):
    results = _seeded_results(tmp_path, HARD_IN_FOCUS)
    out = tmp_path / "out"
    page = build.write_report(results, out).read_text()
    table = analysis.load_results(results)
    for name, title in (
        ("generalization_gap", "Generalization gap G_OOD"),
        ("transfer_mixture", "Figure 7.2: transfer versus mixture"),
        ("training_time", "Training time"),
    ):
        assert f'id="chart-defocus_{name}"' in page and f"<h3>{title}</h3>" in page, name
        assert (out / "figures" / f"defocus_{name}.svg").stat().st_size > 1000, name
    # each new section opens with its question and a generated answer
    text = _text(page)
    assert "How much worse are models away from their own training domain (G_OOD)?" in text
    assert "How much training time does freezing part of the network save?" in text
    assert "Figure 7.2: does transfer with a small target set approach" in text
    # the G_OOD heatmap embeds the analysis values with their intervals
    spec = _spec(page, "defocus_generalization_gap")
    rows = [
        r for r in spec["datasets"]["gap_pretrain"] if r.get("sel_reduce", "median") == "median"
    ]
    rows = [r for r in rows if all(r.get(k, "all") == "all" for k in r if k.startswith("sel_")
                                   and k != "sel_reduce")]  # fmt: skip
    want = analysis.generalization_gap(table, "pretrain", ci=0.95)
    assert sorted(
        (r["train_domain"], r["eval_domain"], round(r["gap"], 4)) for r in rows
    ) == sorted(
        (a, b, round(g, 4)) for a, b, g in want.select("train_domain", "eval_domain", "gap").rows()
    )
    assert any(r.get("gap_ci_low") is not None for r in rows)
    # training time and Figure 7.2 tables are written as CSV
    times = pl.read_csv(out / "tables" / "defocus_training_time.csv")
    assert set(times.get_column("phase")) == {"pretrain", "transfer", "baseline"}
    models = pl.read_csv(out / "tables" / "defocus_transfer_mixture.csv")
    assert models.height == 6  # 3 transfer models 0 -> 10 and 3 mixtures 0 + 10
    figure = (out / "figures" / "defocus_transfer_mixture.svg").read_text()
    points = re.search(r'<g class="mark-symbol role-mark model_points[^"]*"[^>]*>(.*?)</g>', figure)
    assert points and points.group(1).count("<path") == 6  # one point per model


def _figure_models(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    """Per-model points of Figure 7.2: 2 seeds x 2 sizes per method and pair."""
    rows = []
    for source, target in pairs:
        for method, sizes in (("transfer", (64, 128)), ("mixture", (128, 256))):
            for n, seed in ((n, seed) for n in sizes for seed in (0, 1)):
                rows.append(
                    {"source": source, "target": target, "method": method, "n_target_images": n,
                     "model_id": f"{source}{target}{method}{n}{seed}", "seed": seed,
                     "loss": 0.1 + 0.01 * seed + 1 / n, "pretrain_lr": 1e-4,
                     "transfer_lr": 1e-5 if method == "transfer" else None,
                     "n_pretrain": 512 if method == "transfer" else None, "freeze": "none"}
                )  # fmt: skip
    return pl.DataFrame(rows)


def test_figure_7_2_draws_the_paper_panel_first_dashed_transfer_solid_mixture(tmp_path):
    chart = reference_plots.transfer_mixture_chart(
        _figure_models([("0", "10"), ("-10", "5"), ("-5", "0")])
    )
    spec = vega.chart_spec(chart)
    assert spec["facet"]["sort"] == ["-10 → 5", "-5 → 0", "0 → 10"]
    dash = next(n["strokeDash"] for n in _walk(spec) if "strokeDash" in n)
    assert dash["scale"] == {"domain": ["transfer", "mixture"], "range": [[6, 3], [1, 0]]}
    line = next(n for n in _walk(spec) if n.get("mark") in ("line", {"type": "line"}))
    assert line["encoding"]["y"]["aggregate"] == "mean"  # the line is the mean over models
    svg = vlc.vegalite_to_svg(spec)
    assert svg.count('class="mark-symbol role-mark model_points') == 3  # one layer per panel
    assert svg.index("-10 → 5") < svg.index("0 → 10")
    assert 'stroke-dasharray="6,3"' in svg


def test_training_time_chart_names_the_device_and_its_sharing():
    times = pl.DataFrame(
        {"phase": ["transfer"] * 3, "freeze": ["none", "encoder", "encoder"],
         "n_train_images": [64, 64, 64], "train_device": ["cuda:0"] * 3,
         "trials_sharing_device": [1, 1, 4], "seconds_per_epoch": [2.0, 1.6, 3.0],
         "saving": [0.0, 0.2, None], "n_models": [3, 3, 1]}
    )  # fmt: skip
    spec = vega.chart_spec(reference_plots.training_time_chart(times))
    groups = {row["group"] for row in spec["datasets"]["times"]}
    assert groups == {
        "transfer · 64 img · cuda:0 shared by 1",
        "transfer · 64 img · cuda:0 shared by 4",
    }
    finding = sentences.freezing_time_saving(times, "defocus")
    assert "frozen encoder, transfer on 64 images: 0.2" in finding.answer
    assert "Up to 4 trials shared a device" in finding.answer
    assert finding.reference and finding.agrees is True


def _relabelled(directory: Path, study: str, labels: dict[str, str]) -> Path:
    """The results of ``directory`` as another study, with its domains renamed."""
    table = pl.read_parquet(directory / "part-0.parquet").with_columns(
        pl.col(c).replace(labels) for c in ("pretrain_domain", "transfer_domain", "eval_domain")
    )
    table.with_columns(study=pl.lit(study)).write_parquet(directory / "part-0.parquet")
    return directory


@pytest.mark.slow
def test_dose_and_structure_studies_get_the_papers_views(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "s").mkdir()
    dose = _relabelled(_seeded_results(tmp_path / "d", HARD_IN_FOCUS), "dose",
                       {"0": "30", "5": "300", "10": "75"})  # fmt: skip
    page = build.write_report(dose, tmp_path / "dose").read_text()
    spec = _spec(page, "dose_pair_matrix")
    titles = {n.get("title") for n in _walk(spec) if isinstance(n.get("title"), str)}
    assert {"target dose (e/Å²)", "pretraining dose (e/Å²)"} <= titles
    x = next(n for n in _walk(spec) if n.get("field") == "target_domain" and "sort" in n)
    assert x["sort"] == ["30", "75", "300"]  # numeric order
    labels = {"0": "CdSe-small", "5": "ZnS-large", "10": "CdSe-large"}
    structure = _relabelled(_seeded_results(tmp_path / "s", HARD_IN_FOCUS), "structure", labels)
    out = tmp_path / "structure"
    page = build.write_report(structure, out).read_text()
    assert 'id="chart-structure_structure"' in page
    spec = _spec(page, "structure_structure")
    lattice = next(
        n for n in _walk(spec) if n.get("field") == "target_domain_lattice" and "sort" in n
    )
    assert lattice["sort"] == ["ZnS", "CdSe"]  # the reference study's order, not alphabetical
    rows = spec["datasets"]["structure"]
    assert {(r["pretrain_domain_size"], r["panel"]) for r in rows} == {
        (size, f"after {phase} · target {target}") for size in ("small", "large")
        for phase in ("pretraining", "transfer") for target in ("small", "large")
    }  # fmt: skip
    svg = (out / "figures" / "structure_structure.svg").read_text()
    assert svg.count('class="mark-rect role-mark') == 8  # 2 pretraining x 2 phases x 2 target sizes
    assert reference_plots.structure_parts(pl.DataFrame({"d": ["Fe3O4-large", "Cu"]}), "d").rows() == [
        ("Fe3O4-large", "Fe3O4", "large"), ("Cu", "Cu", "")
    ]  # fmt: skip


# ----------------------------------------------------------------------------- browser
def _chromium():
    """A headless Chromium session through chromedriver (fails if either is missing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail(
            "chromium and chromedriver are needed (Debian: apt install chromium chromium-driver;"
            " .ci/run installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='hrtem-chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _wait(driver, condition: str, timeout: float = 60) -> None:
    """Wait until a JavaScript expression is truthy."""
    deadline = time.monotonic() + timeout
    while not driver.execute_script(f"return Boolean({condition});"):
        if time.monotonic() > deadline:
            raise TimeoutError(condition)
        time.sleep(0.2)


def _chart_svg(driver, chart_id: str) -> str:
    return driver.execute_script(
        "const svg = document.querySelector(arguments[0] + ' svg'); return svg ? svg.outerHTML : '';",
        f"#{chart_id}",
    )


def _visible_findings(driver) -> dict[str, str]:
    """The rendered text of the findings block's items, checked to be shown above the charts."""
    block = driver.find_element("css selector", "section.findings")
    first_chart = driver.find_element("css selector", ".chart")
    assert block.is_displayed() and block.location["y"] < first_chart.location["y"]
    rows = block.find_elements("css selector", "tr.finding-row")
    items = {r.get_attribute("data-finding"): r.text for r in rows}
    assert len(items) == 9 and all(text.strip() for text in items.values()), items
    return items


def check_report_in_browser(path: Path, screenshot: Path) -> dict:
    """Open a report in headless Chromium and check it; return what was seen.

    Checks that every chart rendered an SVG, that the findings block is visible at the
    top with a row per finding, that error bars (intervals) are drawn, that the
    browser logged no error, and that changing a filter control changes the rendered
    charts. Saves a full-page screenshot.
    """
    driver = _chromium()
    try:
        driver.get(path.resolve().as_uri())
        _wait(driver, "document.body.dataset.rendered")
        assert driver.execute_script("return document.body.dataset.rendered") == "true"
        charts = driver.execute_script(
            "return [...document.querySelectorAll('.chart')].map(c => c.id);"
        )
        assert charts, "no charts in the page"
        for chart_id in charts:
            svg = _chart_svg(driver, chart_id)
            assert "<svg" in svg and "mark-" in svg, f"{chart_id} did not render"
        findings = _visible_findings(driver)
        error_bars = driver.execute_script(
            "return document.querySelectorAll('.chart g[class*=\"errorbar_\"] line').length;"
        )
        assert error_bars > 0, "no interval drawn in any chart"

        # Screenshot of the whole page at the default selection.
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(1400, min(int(height) + 100, 12000))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))

        # A filter change must update the charts: pick the last option of each control
        # whose chart SVG changes (reduce "max" always differs from "median").
        before = {c: _chart_svg(driver, c) for c in charts}
        select = driver.find_element("css selector", "select.control[data-param='sel_reduce']")
        driver.execute_script(
            "arguments[0].value = 'max'; arguments[0].dispatchEvent(new Event('change'));", select
        )
        _wait(driver, "document.body.dataset.updating === 'false'")
        after = {c: _chart_svg(driver, c) for c in charts}
        changed = [c for c in charts if after[c] != before[c]]
        assert any("pair_matrix" in c for c in changed), "reduce=max did not change the heatmaps"
        freeze = driver.find_element("css selector", "select.control[data-param='sel_freeze']")
        options = [o.get_attribute("value") for o in freeze.find_elements("css selector", "option")]
        driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'));",
            freeze,
            options[-1],
        )
        _wait(driver, "document.body.dataset.updating === 'false'")
        filtered = {c: _chart_svg(driver, c) for c in charts}
        freeze_changed = [c for c in charts if filtered[c] != after[c]]
        assert freeze_changed, f"freeze={options[-1]} changed no chart"

        figure_7_2_points = driver.execute_script(
            "return document.querySelectorAll("
            "'#chart-defocus_transfer_mixture g[class*=model_points] path').length;"
        )

        logs = driver.get_log("browser")
        errors = [entry for entry in logs if entry["level"] == "SEVERE"]
        assert not errors, errors
        return {
            "charts": charts,
            "changed_by_reduce": changed,
            "changed_by_freeze": freeze_changed,
            "screenshot": str(screenshot),
            "findings": findings,
            "error_bars": error_bars,
            "figure_7_2_points": figure_7_2_points,
            "warnings": [e["message"] for e in logs if e["level"] == "WARNING"],
        }
    finally:
        driver.quit()


@pytest.mark.slow
def test_report_renders_in_chromium(laptop_run, tmp_path):
    """The report of the laptop study renders in a real browser and its filters work."""
    path = build.write_report(laptop_run.results_dir, tmp_path / "report", laptop_run.data_dir)
    screenshot = ARTIFACTS / "report_laptop.png"
    seen = check_report_in_browser(path, screenshot)
    assert "chart-defocus_examples" in seen["charts"]  # the dataset panel is there
    # the findings block is analysis.findings of the same table, every finding once
    expected = analysis.findings(analysis.load_results(laptop_run.results_dir))
    assert list(seen["findings"]) == expected["finding"].to_list()
    for key, verdict in zip(expected["finding"], expected["verdict"], strict=True):
        assert verdict in seen["findings"][key], (key, seen["findings"][key])
    # the reference study's views: G_OOD, training time and Figure 7.2 rendered in the page
    for name in ("generalization_gap", "training_time", "transfer_mixture"):
        assert f"chart-defocus_{name}" in seen["charts"], seen["charts"]
    # the study root is found from the results path: learning curves and the prediction
    # panel (a held-out image, its truth and the median model's probability) are drawn
    for name in ("learning_curves", "predictions"):
        assert f"chart-defocus_{name}" in seen["charts"], seen["charts"]
    assert seen["figure_7_2_points"] > 0
    tables = path.parent / "tables"
    times = pl.read_csv(tables / "defocus_training_time.csv")
    assert set(times.get_column("phase")) == {"pretrain", "transfer", "baseline"}
    assert (times.get_column("seconds_per_epoch") > 0).all()
    columns = analysis.load_results(laptop_run.results_dir).columns
    shown = [c for c in analysis.DEVICE_COLUMNS if c in columns]
    assert set(shown) <= set(times.columns)  # what the time was measured on is shown
    gaps = pl.read_csv(tables / "defocus_generalization_gap.csv")
    assert set(gaps.get_column("phase")) == {"pretrain", "transfer"}
    # Figure 7.2 out of the box: the laptop preset's pair -10 -> 5 nm, both arms
    figure = pl.read_csv(tables / "defocus_transfer_mixture.csv", infer_schema_length=None)
    pair = figure.filter(
        (pl.col("source").cast(pl.Utf8) == "-10") & (pl.col("target").cast(pl.Utf8) == "5")
    )
    assert {"transfer", "mixture"} <= set(pair.get_column("method")), figure
    assert screenshot.stat().st_size > 10_000
    print(f"report screenshot: {screenshot}")


def test_filler_cells_are_never_drawn_as_results(tmp_path):
    """A pair without a transfer model (its table row repeats the pretrain value) is blank
    in the pair matrix and the OOD spread, with a legend entry; measured cells are drawn."""
    from hrtem_ray.report import plots

    table = analysis.load_results(_seeded_results(tmp_path, HARD_IN_FOCUS))
    table = table.filter(
        ~((pl.col("phase") == "transfer") & (pl.col("pretrain_domain") == "0"))
    )  # no transfer from 0 nm: its cells are fillers
    pairs = pl.concat(
        [analysis.pair_matrix(table, phase).with_columns(phase=pl.lit(phase)) for phase in
         ("pretrain", "transfer")], how="diagonal_relaxed",
    )  # fmt: skip
    filler = pairs.filter((pl.col("phase") == "transfer") & pl.col("from_pretrain"))
    assert not filler.is_empty()
    spec = vega.chart_spec(plots.pair_heatmaps(pairs))
    marks = [n for n in _walk(spec) if "mark" in n]
    filters = [t["filter"] for n in marks for t in n.get("transform", []) if "filter" in t]
    assert "!datum.from_pretrain" in filters and "datum.from_pretrain" in filters
    blank = next(n for n in marks if {"filter": "datum.from_pretrain"} in n.get("transform", []))
    assert blank["encoding"]["opacity"]["legend"] is not None  # its legend entry
    ood = vega.chart_spec(plots.ood_spread_chart(analysis.ood_spread(table)))
    ood_filters = [t.get("filter") for n in _walk(ood) for t in n.get("transform", [])]
    assert plots.NO_FILLER in ood_filters
