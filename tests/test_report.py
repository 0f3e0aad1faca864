"""Tests of the HTML report: files written, and the page rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

from hrtem_ray import analysis, report

REPO = Path(__file__).resolve().parents[1]
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
    path = report.write_report(_results(tmp_path), tmp_path / "report", data_dir=tmp_path / "no")
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


@pytest.mark.parametrize("study", ["../../x", ".hidden/.."])
def test_names_from_the_table_cannot_leave_the_output_dir(tmp_path, study):
    results = _rename(_results(tmp_path), study=study, domain="../y")
    out = tmp_path / "deep" / "er" / "report"
    before = _files_under(tmp_path)
    path = report.write_report(results, out)
    written = _files_under(tmp_path) - before
    assert written and all(out in f.parents for f in written), sorted(written)
    key = report.safe_name(study)
    assert ".." not in key and "/" not in key and not key.startswith(".")
    assert (out / "figures" / f"{key}_pair_matrix.svg").stat().st_size > 1000
    assert (out / "tables" / f"{key}_pair_matrix.csv").is_file()
    page = path.read_text()
    assert f'id="chart-{key}_pair_matrix"' in page
    assert "../y" in pl.read_csv(out / "tables" / f"{key}_pair_matrix.csv")["target_domain"]


def test_distinct_studies_with_the_same_safe_name_get_distinct_files(tmp_path):
    first = _rename(_results(tmp_path), study="a/b")
    second = pl.read_parquet(first / "part-0.parquet").with_columns(study=pl.lit("a_b"))
    second.write_parquet(first / "part-1.parquet")
    report.write_report(first, tmp_path / "out")
    svgs = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*_pair_matrix.svg"))
    assert svgs == ["a_b-2_pair_matrix.svg", "a_b_pair_matrix.svg"]


def test_output_path_stays_inside(tmp_path):
    assert report.output_path(tmp_path, "figures", "a.svg") == tmp_path / "figures" / "a.svg"
    for parts in (("..", "x.svg"), ("figures", "../../x.svg"), ("/etc/passwd",)):
        with pytest.raises(report.ReportError, match="outside the report directory"):
            report.output_path(tmp_path, *parts)


def test_nothing_is_created_before_the_input_is_checked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match="no results yet"):
        report.write_report(empty, tmp_path / "out")
    not_results = tmp_path / "shards"
    not_results.mkdir()
    pl.DataFrame({"image": [1.0]}).write_parquet(not_results / "x.parquet")
    with pytest.raises(report.ReportError, match="not a results table.*phase"):
        report.write_report(not_results, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_notes_are_shown_at_the_top_of_the_report(tmp_path):
    table = analysis.load_results(_results(tmp_path))
    notes = ["partial: 5 of 6 models", "ignored 3 rows of 1 models from other configurations"]
    page = report.write_report(table, tmp_path / "out", notes=notes).read_text()
    top = page.split('class="meta"', 1)[0]
    assert all(note in top for note in notes)
    assert "partial:" not in report.write_report(table, tmp_path / "plain").read_text()


def test_default_selection_picks_median_and_all():
    table = pl.DataFrame(
        {
            "sel_reduce": ["median", "mean", "median"],
            "sel_freeze": ["all", "all", "none"],
            "x": [1, 2, 3],
        }
    )
    assert report.default_selection(table).to_dict(as_series=False) == {"x": [1]}


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


def check_report_in_browser(path: Path, screenshot: Path) -> dict:
    """Open a report in headless Chromium and check it; return what was seen.

    Checks that every chart rendered an SVG, that the browser logged no error, and that
    changing a filter control changes the rendered charts. Saves a full-page screenshot.
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

        logs = driver.get_log("browser")
        errors = [entry for entry in logs if entry["level"] == "SEVERE"]
        assert not errors, errors
        return {
            "charts": charts,
            "changed_by_reduce": changed,
            "changed_by_freeze": freeze_changed,
            "screenshot": str(screenshot),
            "warnings": [e["message"] for e in logs if e["level"] == "WARNING"],
        }
    finally:
        driver.quit()


@pytest.mark.slow
def test_report_renders_in_chromium(laptop_run, tmp_path):
    """The report of the laptop study renders in a real browser and its filters work."""
    path = report.write_report(laptop_run.results_dir, tmp_path / "report", laptop_run.data_dir)
    screenshot = ARTIFACTS / "report_laptop.png"
    seen = check_report_in_browser(path, screenshot)
    assert "chart-defocus_examples" in seen["charts"]  # the dataset panel is there
    assert screenshot.stat().st_size > 10_000
    print(f"report screenshot: {screenshot}")
