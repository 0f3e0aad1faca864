"""hrtem-ray import: micrographs as imported domains of a dataset, and their use in a study.

Files are written from this project's own simulated images (the tiny dataset, 0.4 Å per
pixel) with tifffile and Pillow and imported through :mod:`hrtem_ray.dataset.micrographs`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from hrtem_ray.dataset import manifest, readers
from hrtem_ray.dataset.geometry import resample
from hrtem_ray.dataset.imported import assign_splits
from hrtem_ray.dataset.micrograph_files import MicrographError, MicrographWarning
from hrtem_ray.dataset.micrographs import (
    check_imported_use,
    import_micrographs,
    imported_domains,
)

PIXEL_ANGSTROM = 0.4  # the tiny dataset's output sampling
REAL = Path(__file__).resolve().parents[1] / "data" / "real_em"  # real files (see its README)


def _write_calibrated_tiff(path: Path, image: np.ndarray) -> None:
    """An ImageJ TIFF of ``image`` at :data:`PIXEL_ANGSTROM`, calibrated in nm."""
    size_nm = PIXEL_ANGSTROM / 10
    tifffile.imwrite(
        path, image, imagej=True, resolution=(1 / size_nm,) * 2, metadata={"unit": "nm"}
    )


def test_calibration_is_honoured_half_the_pixel_size_imports_to_the_same_tile(
    mosaic, dataset_copy, tmp_path
):
    """The image at 0.2 Å/px (quintic spline upsampling of the 0.4 Å/px image by
    scikit-image, pixel centres aligned, independent of the importer) imports to the
    original tiles within 20 % RMS of the image's standard deviation (measured 18 %): the
    spline's own error on lattice fringes near Nyquist (ignoring the calibration: > 50 %)."""
    from skimage.transform import resize

    image, mask = mosaic
    fine = resize(image.astype(np.float64), (256, 256), order=5, mode="symmetric")
    fine = fine.astype(np.float32)
    coarse_path, fine_path = tmp_path / "coarse.tif", tmp_path / "fine.tif"
    _write_calibrated_tiff(coarse_path, image)
    tifffile.imwrite(
        fine_path, fine, imagej=True, resolution=(1 / 0.02, 1 / 0.02), metadata={"unit": "nm"}
    )
    import_micrographs([coarse_path, fine_path], dataset_copy, "cal", val_fraction=0.5)
    coarse = readers.read_images(dataset_copy, "cal", "train").images  # coarse.tif sorts first
    fine_tiles = readers.read_images(dataset_copy, "cal", "val").images
    assert coarse.shape == fine_tiles.shape == (4, 64, 64)
    np.testing.assert_array_equal(coarse[0], image[:64, :64])
    rms = np.sqrt(np.mean((fine_tiles - coarse) ** 2)) / image.std()
    print(f"relative RMS difference {rms:.4f}")
    assert rms < 0.2, rms
    # the check can fail: the same file read as if at 0.4 Å/px gives other tiles
    wrong = resample(fine, PIXEL_ANGSTROM, PIXEL_ANGSTROM)[:64, :64]
    assert np.sqrt(np.mean((wrong - coarse[0]) ** 2)) / image.std() > 0.5


def test_import_writes_shards_with_manifest_checksums_and_provenance(
    mosaic, dataset_copy, tmp_path
):
    image, mask = mosaic
    files, masks = [], []
    for k in range(3):
        path = tmp_path / f"m{k}.tif"
        _write_calibrated_tiff(path, np.roll(image, 8 * k, axis=1))
        files.append(path)
        mask_path = tmp_path / f"m{k}_mask.png"
        Image.fromarray((np.roll(mask, 8 * k, axis=1) > 0.5).astype(np.uint8) * 255).save(mask_path)
        masks.append(mask_path)
    before = readers.summarize(dataset_copy)
    summary = import_micrographs(files, dataset_copy, "exp_au", masks=masks, overlap_px=16)
    # 128 px with 64 px tiles overlapping by 16 px: starts 0, 48, 64 -> 9 tiles per file
    assert summary.tiles == {"train": 18, "val": 9} and summary.tile_px == 64
    assert summary.files == {"m0.tif": "train", "m1.tif": "train", "m2.tif": "val"}
    assert manifest.verify_shards(dataset_copy) == []
    counts = readers.summarize(dataset_copy)
    assert counts["exp_au"] == {"train": 18, "val": 9}
    assert {k: v for k, v in counts.items() if k != "exp_au"} == before
    table = readers.read_table(dataset_copy, ["exp_au"], "train")
    row = table.slice(0, 1).to_pylist()[0]
    assert row["structure_id"] == "m0.tif/y00000x00000" and row["lattice"] == "imported"
    assert row["pixel_size_angstrom"] == pytest.approx(PIXEL_ANGSTROM)
    # the same columns as simulated rows: one table of every domain
    everything = readers.read_table(dataset_copy)
    assert set(everything.column("domain").to_pylist()) == {"-10", "0", "10", "exp_au"}
    shard = next((dataset_copy / "study=defocus" / "domain=exp_au" / "split=val").glob("*"))
    record = json.loads(pq.read_schema(shard).metadata[b"hrtem_ray.imported"])
    assert record["source_file"] == "m2.tif"
    assert record["source_sha256"] == hashlib.sha256(files[2].read_bytes()).hexdigest()
    assert record["source_pixel_size_angstrom"] == pytest.approx(PIXEL_ANGSTROM)
    assert record["calibration"] == "file (ImageJ nm)"
    assert record["tiles_y_x_px"][:3] == [[0, 0], [0, 48], [0, 64]]
    selection = readers.read_images(dataset_copy, "exp_au", "train")
    np.testing.assert_array_equal(selection.images[0], image[:64, :64])
    np.testing.assert_array_equal(selection.masks[0], (mask[:64, :64] > 0.5).astype(np.float32))
    domains = imported_domains(dataset_copy)
    assert domains["exp_au"].has_masks and domains["exp_au"].images == {"train": 18, "val": 9}
    assert check_imported_use(dataset_copy, ["exp_au"], "domains.transfer")
    # a damaged imported shard is found like a simulated one
    damaged = next((Path(dataset_copy) / "study=defocus" / "domain=exp_au").rglob("*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:-10])
    assert [p.path for p in manifest.verify_shards(dataset_copy)] == [str(damaged)]


def test_check_repair_removes_a_damaged_imported_domain_so_it_can_be_imported_again(
    mosaic, dataset_copy, tmp_path
):
    """An imported domain cannot be simulated again: `check --repair` moves all of it away
    (not only the damaged shard: also its claim and record) and says to import it again,
    which then works; rerunning the import instead writes the damaged shard again."""
    from hrtem_ray.sweep.check import inspect_study, repair

    image, _ = mosaic
    files = []
    for k in range(2):
        files.append(tmp_path / f"m{k}.npy")
        np.save(files[-1], np.roll(image, 8 * k, axis=1))
    import_micrographs(files, dataset_copy, "exp_au", pixel_size_angstrom=PIXEL_ANGSTROM)
    before = readers.summarize(dataset_copy)
    damaged = next((Path(dataset_copy) / "study=defocus" / "domain=exp_au").rglob("*.parquet"))
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[:-10])
    again = import_micrographs(files, dataset_copy, "exp_au", pixel_size_angstrom=PIXEL_ANGSTROM)
    assert (again.status, again.written) == ("repaired", 1)
    assert damaged.read_bytes() == intact and manifest.verify_shards(dataset_copy) == []
    damaged.write_bytes(intact[:-10])
    report = inspect_study(str(tmp_path / "study"), data_root=str(dataset_copy))
    assert [(p.kind, p.domain) for p in report.problems] == [("shard", "exp_au")]
    actions = repair(report)
    assert any("imported domain exp_au removed" in a and "hrtem-ray import" in a for a in actions)
    assert "exp_au" not in imported_domains(dataset_copy)
    assert list((dataset_copy / "_imported").iterdir()) == []
    assert manifest.verify_shards(dataset_copy) == []
    import_micrographs(files, dataset_copy, "exp_au", pixel_size_angstrom=PIXEL_ANGSTROM)
    assert readers.summarize(dataset_copy) == before  # the same tiles, simulated domains untouched


def test_the_report_marks_imported_domains(mosaic, dataset_copy, tmp_path):
    from hrtem_ray.report.build import imported_domains_note

    image, _ = mosaic
    np.save(tmp_path / "m.npy", image)
    assert imported_domains_note(dataset_copy, ["-10", "0", "exp_au"]) is None
    import_micrographs(
        [tmp_path / "m.npy"], dataset_copy, "exp_au", pixel_size_angstrom=PIXEL_ANGSTROM
    )
    note = imported_domains_note(dataset_copy, ["-10", "0", "exp_au"])
    assert note == "imported domains (micrographs, not simulated): exp_au"
    assert imported_domains_note(dataset_copy, ["-10", "0"]) is None  # not in the results


def test_a_domain_without_masks_is_for_prediction_only(mosaic, dataset_copy, tmp_path):
    image, _ = mosaic
    path = tmp_path / "nomask.npy"
    np.save(path, image)
    import_micrographs([path], dataset_copy, "exp_nomask", pixel_size_angstrom=PIXEL_ANGSTROM)
    assert not imported_domains(dataset_copy)["exp_nomask"].has_masks
    assert np.isnan(readers.read_images(dataset_copy, "exp_nomask", "train").masks).all()
    with pytest.raises(MicrographError, match="has no masks.*--masks"):
        check_imported_use(dataset_copy, ["exp_nomask"], "domains.eval")
    with pytest.raises(MicrographError, match="not an imported domain"):
        check_imported_use(dataset_copy, ["exp_other"], "domains.transfer")


def _manifest(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "_manifest").iterdir())


IMPORT_ERRORS = [
    "format",
    "mask shape",
    "same name",
    "calibration",
    "domain",
    "label-map mask",
    "diffraction",
    "upsampling",
    "test files",
]


@pytest.mark.parametrize("case", IMPORT_ERRORS)
def test_import_errors_before_anything_is_written(mosaic, dataset_copy, tmp_path, case):
    image, mask = mosaic
    good = tmp_path / "good.tif"
    _write_calibrated_tiff(good, image)
    (tmp_path / "other").mkdir()
    kwargs: dict = {}
    if case == "format":
        bad = tmp_path / "image.xyz"
        bad.write_bytes(b"\0" * 64)
        files, match = [good, bad], "unknown format '.xyz'"
    elif case == "mask shape":
        small = tmp_path / "small.npy"
        np.save(small, mask[:100])
        files, match = [good], r"mask .*small.npy has shape \(100, 128\), its image \(128, 128\)"
        kwargs["masks"] = [small]
    elif case == "same name":
        twin = tmp_path / "other" / "good.tif"
        shutil.copy(good, twin)
        files, match = [good, twin], "two files have the same name 'good.tif'"
    elif case == "calibration":
        plain = tmp_path / "plain.npy"
        np.save(plain, image)
        files, match = [good, plain], "no pixel size calibration; pass --pixel-size-angstrom"
    elif case == "label-map mask":  # all 7s: once imported as a soft mask of 0.027
        labels = tmp_path / "labels.png"
        Image.fromarray(np.full(image.shape, 7, np.uint8)).save(labels)
        files, match = [good], r"mask .*labels.png: values 7 are not a mask; allowed: "
        kwargs["masks"] = [labels]
    elif case == "diffraction":  # refused even with a pixel size for uncalibrated files
        files = [good, REAL / "test_diffraction_pattern.dm3"]
        match = r"test_diffraction_pattern.dm3: a diffraction pattern \(calibrated in 1/nm"
        kwargs["pixel_size_angstrom"] = 1.0
    elif case == "upsampling":  # 112 px at 12.49 A/px: 31x into 3,025 tiles of 64 px
        files = [good, REAL / "JEOL HAADF Image.dm4"]
        match = (
            r"112 x 112 px at 12.4901 Å/px would be upsampled 31.2x to 3497 x 3497 px at 0.4 "
            r"Å/px \(3,025 tiles of 64 px\), above the limit of 4x.*--max-upsampling 31.3"
        )
    elif case == "test files":
        files, match = [good], r"--test-files: \['gone.tif'\] are not among the imported files"
        kwargs["test_files"] = ["gone.tif"]
    else:
        files, match = [good], "simulated domain"
    before = _manifest(dataset_copy)
    with pytest.raises(MicrographError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore", MicrographWarning)  # the HAADF file's
        import_micrographs(files, dataset_copy, "0" if case == "domain" else "exp", **kwargs)
    assert _manifest(dataset_copy) == before
    assert not (dataset_copy / "study=defocus" / "domain=exp").exists()


def test_a_real_stem_file_imports_with_its_factor_and_a_warning_above_the_default_limit(
    dataset_copy,
):
    """68 px at 2.485 Å/px is upsampled 6.2x to the tiny dataset's 0.4 Å/px: refused at the
    default limit of 4x, imported with max_upsampling=7, which the summary records; its
    metadata say STEM (operation mode SCANNING), which the warning says."""
    path = REAL / "test_STEM_image.dm3"
    with pytest.raises(MicrographError, match=r"upsampled 6.2x .*--max-upsampling 6.3"):
        with pytest.warns(MicrographWarning):  # read (and warned about) before the refusal
            import_micrographs([path], dataset_copy, "exp_stem")
    with pytest.warns(MicrographWarning, match=r"test_STEM_image.dm3: a STEM image \(operation"):
        summary = import_micrographs([path], dataset_copy, "exp_stem", max_upsampling=7)
    assert summary.resampling_factors == {path.name: pytest.approx(24.8538 / 4, rel=1e-4)}
    assert summary.factors_text() == "6.21x"
    assert summary.tiles == {"train": 49, "val": 0}  # 422 px: 7 x 7 tiles of 64 px
    record = manifest.manifest_entries(dataset_copy)
    (entry,) = [e["imported"] for e in record.values() if "imported" in e]
    assert entry["source_dtype"] == "uint32" and entry["imaging"].startswith("STEM (operation")


def test_the_same_file_under_another_domain_name_warns_naming_the_first(
    mosaic, dataset_copy, tmp_path
):
    image, _ = mosaic
    first, renamed, other = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    np.save(first, image)
    shutil.copy(first, renamed)  # same bytes, another name
    np.save(other, image[::-1])
    import_micrographs([first], dataset_copy, "exp_a", pixel_size_angstrom=PIXEL_ANGSTROM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import_micrographs(
            [renamed, other], dataset_copy, "exp_b", pixel_size_angstrom=PIXEL_ANGSTROM
        )
    (message,) = [str(w.message) for w in caught if w.category is MicrographWarning]
    assert message == (
        f"{renamed}: the same file was imported before as a.npy in domain 'exp_a': training "
        "on one of these domains and evaluating on the other ('exp_b') leaks the evaluation data"
    )


def test_cli_import_states_the_factor_warns_and_refuses_beyond_the_limit(dataset_copy, capsys):
    from hrtem_ray.cli import main

    args = ["import", str(REAL / "test_STEM_image.dm3"), "--data", str(dataset_copy)]
    assert main([*args, "--domain", "exp_stem"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("warning: ") and "a STEM image" in err[0]
    assert err[1].startswith("error: ") and "--max-upsampling 6.3" in err[1]
    assert main([*args, "--domain", "exp_stem", "--max-upsampling", "7"]) == 0
    captured = capsys.readouterr()
    assert "49 train + 0 val + 0 test tiles of 64 px at 0.4 A/px (resampled 6.21x)" in captured.out
    assert captured.err.startswith("warning: ") and "a STEM image" in captured.err


@pytest.mark.parametrize("domain", ["../x", "a/b", "_manifest"])
def test_unsafe_domain_names_are_refused_before_anything_is_read_or_written(tmp_path, domain):
    from hrtem_ray.dataset.micrographs import export_micrographs

    with pytest.raises(MicrographError, match=r"^--domain: .*allowed: "):
        import_micrographs([tmp_path / "a.tif"], tmp_path / "data", domain)
    with pytest.raises(MicrographError, match=r"^domain: .*allowed: "):
        export_micrographs(tmp_path / "data", domain, tmp_path / "out", pixel_size_angstrom=0.3)
    assert list(tmp_path.iterdir()) == []


def test_splits_are_whole_files():
    assert assign_splits(["b", "a", "c", "d"], 0.25) == {
        "a": "train",
        "b": "train",
        "c": "train",
        "d": "val",
    }
    assert assign_splits(["a"], 0.25) == {"a": "train"}
    assert set(assign_splits(["a", "b"], 0.25).values()) == {"train", "val"}


def test_test_splits_are_whole_files_named_or_a_fraction():
    names = ["e", "b", "a", "c", "d"]
    assert assign_splits(names, 0.25, test_fraction=0.2) == {
        "a": "train", "b": "train", "c": "train", "d": "val", "e": "test"
    }  # fmt: skip
    assert assign_splits(names, 0.25, test_files=["a", "c"]) == {
        "a": "test", "b": "train", "c": "test", "d": "train", "e": "val"
    }  # fmt: skip
    assert "test" not in assign_splits(names, 0.25).values()  # no test split by default
    with pytest.raises(MicrographError, match=r"--test-files: \['x.png'\] are not among"):
        assign_splits(names, 0.25, test_files=["x.png"])
    with pytest.raises(MicrographError, match="leave at least one file for training"):
        assign_splits(["a"], 0.0, test_files=["a"])
    with pytest.raises(MicrographError, match=r"--test-fraction: 1.0 is outside \[0, 1\)"):
        assign_splits(names, 0.25, test_fraction=1.0)


def _mosaic_files(mosaic, tmp_path: Path, n: int) -> tuple[list[Path], list[Path]]:
    """``n`` NPY micrographs (the mosaic rolled by 5 px each) and their masks."""
    image, mask = mosaic
    files, masks = [], []
    for k in range(n):
        files.append(tmp_path / f"f{k}.npy")
        np.save(files[-1], np.roll(image, 5 * k, axis=0))
        masks.append(tmp_path / f"f{k}_mask.npy")
        np.save(masks[-1], np.roll(mask, 5 * k, axis=0))
    return files, masks


def test_a_whole_file_test_split_shares_no_micrograph_with_train_or_val(
    mosaic, dataset_copy, tmp_path
):
    """Every tile of a test micrograph is in the test split, none in train or val; the
    summary and the manifest say which files were held out."""
    files, masks = _mosaic_files(mosaic, tmp_path, 5)
    summary = import_micrographs(
        files, dataset_copy, "exp", masks=masks, pixel_size_angstrom=0.4, test_files=["f1.npy"]
    )
    assert summary.files["f1.npy"] == "test" and summary.tiles == {"train": 12, "val": 4, "test": 4}
    assert "test split (held out whole): f1.npy" in summary.describe(dataset_copy)
    sources = {}
    for split in ("train", "val", "test"):
        table = readers.read_table(dataset_copy, ["exp"], split)
        sources[split] = {s.split("/")[0] for s in table["structure_id"].to_pylist()}
    assert sources["test"] == {"f1.npy"}
    assert not sources["test"] & (sources["train"] | sources["val"])
    assert imported_domains(dataset_copy)["exp"].images == {"train": 12, "val": 4, "test": 4}
    records = [e["imported"] for e in manifest.manifest_entries(dataset_copy).values()
               if "imported" in e]  # fmt: skip
    assert {r["source_file"]: r["split"] for r in records}["f1.npy"] == "test"


def test_imported_domains_have_their_own_training_counts(mosaic, dataset_copy, tmp_path):
    """A transfer size above the simulated domains' training images (6) is admitted up to
    the imported domain's tile count (12), checked against the dataset before the sweep;
    one tile more is refused, naming the count."""
    from helpers import TWO_MODEL_STUDY

    from hrtem_ray.dataset.micrographs import check_spec_imports
    from hrtem_ray.spec.base import SpecError
    from hrtem_ray.spec.config import parse_study_spec

    files, masks = _mosaic_files(mosaic, tmp_path, 4)
    import_micrographs(files, dataset_copy, "exp_au", masks=masks, pixel_size_angstrom=0.4)

    def spec(transfer, n_images):
        raw = {
            **TWO_MODEL_STUDY,
            "domains": {"pretrain": ["0"], "transfer": transfer, "imported": ["exp_au"]},
            "transfer": {"lr": [1e-4], "n_images": [n_images], "freeze": ["none"]},
        }
        return parse_study_spec(raw, source="tests")

    check_spec_imports(spec(["exp_au"], 12), dataset_copy)  # 12 train tiles, 6 simulated
    with pytest.raises(MicrographError, match="transfer.n_images: .* 12 training tiles, 13 needed"):
        check_spec_imports(spec(["exp_au"], 13), dataset_copy)
    with pytest.raises(SpecError, match=r"transfer.n_images: \[12\] exceed the 6 training"):
        spec(["10", "exp_au"], 12)  # a simulated target holds only 6


def test_a_spec_names_imported_domains_checked_against_the_dataset(mosaic, dataset_copy, tmp_path):
    from helpers import TWO_MODEL_STUDY

    from hrtem_ray.dataset.micrographs import check_spec_imports
    from hrtem_ray.spec.base import SpecError
    from hrtem_ray.spec.config import parse_study_spec

    image, mask = mosaic
    files, masks = [], []
    for k in range(4):
        files.append(tmp_path / f"f{k}.npy")
        np.save(files[-1], np.roll(image, 5 * k, axis=0))
        masks.append(tmp_path / f"f{k}_mask.npy")
        np.save(masks[-1], np.roll(mask, 5 * k, axis=0))
    import_micrographs(files, dataset_copy, "exp_au", masks=masks, pixel_size_angstrom=0.4)
    with pytest.warns(MicrographWarning, match="in domain 'exp_au'"):  # the same files again
        import_micrographs(files[:1], dataset_copy, "exp_raw", pixel_size_angstrom=0.4)
    with pytest.warns(MicrographWarning, match="in domain 'exp_au'"):
        import_micrographs(
            files[:2], dataset_copy, "exp_few", masks=masks[:2], pixel_size_angstrom=0.4
        )

    def spec(transfer, imported, n_images=2):
        raw = {
            **TWO_MODEL_STUDY,
            "domains": {"pretrain": ["0"], "transfer": transfer, "imported": imported},
            "transfer": {"lr": [1e-4], "n_images": [n_images], "freeze": ["none"]},
        }
        return parse_study_spec(raw, source="tests")

    with pytest.raises(SpecError, match=r"unknown domains \['exp_au'\].*domains.imported"):
        spec(["10", "exp_au"], [])
    check_spec_imports(spec(["10", "exp_au"], ["exp_au"]), dataset_copy)  # 12 train, 4 val
    with pytest.raises(MicrographError, match="'exp_raw' has no masks"):
        check_spec_imports(spec(["exp_raw"], ["exp_raw"]), dataset_copy)
    check_spec_imports(spec(["10"], ["exp_raw"]), dataset_copy)  # listed, not trained on: fine
    with pytest.raises(MicrographError, match="'exp_none' is not an imported domain"):
        check_spec_imports(spec(["exp_none"], ["exp_none"]), dataset_copy)
    with pytest.raises(MicrographError, match="transfer.n_images: .* 4 training tiles, 5 needed"):
        check_spec_imports(spec(["exp_few"], ["exp_few"], n_images=5), dataset_copy)


@pytest.mark.slow
def test_a_study_transfers_to_and_evaluates_on_an_imported_domain(
    ray_cluster, dataset_copy, tmp_path, capfd
):
    """Import micrographs (the tiny dataset's own "10" images at 0.3 A/px, with masks), then
    a real sweep pretrains on "0", transfers to the imported domain and evaluates there;
    the report marks the domain as imported."""
    from helpers import TINY_STUDY

    from hrtem_ray.dataset.micrographs import export_micrographs
    from hrtem_ray.spec.config import parse_study_spec
    from hrtem_ray.study import Study

    files = export_micrographs(dataset_copy, "10", tmp_path / "mic", pixel_size_angstrom=0.3)
    masks = sorted((tmp_path / "mic" / "masks").glob("*.tif"))
    import_micrographs(files, dataset_copy, "exp", masks=masks)
    raw = {
        **TINY_STUDY,
        "dataset": {**TINY_STUDY["dataset"], "path": str(dataset_copy)},
        "domains": {"imported": ["exp"], "pretrain": ["0"], "transfer": ["exp"]},
        "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
        "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none"]},
        "baseline": None,
    }
    study = Study(parse_study_spec(raw, source="tests"), out=tmp_path / "study")
    report = study.sweep()
    assert report.finished, report
    table = study.results()
    transfer = table.filter(pl.col("phase") == "transfer")
    assert transfer.get_column("transfer_domain").unique().to_list() == ["exp"]
    assert "exp" in table.get_column("eval_domain").to_list()
    assert table.filter(pl.col("eval_domain") == "exp").get_column("loss").is_finite().all()
    page = Path(study.report()).read_text()
    assert "imported domains (micrographs, not simulated): exp" in page
    # torch is imported before Tune redirects a trial's stderr (tune_adapter), so no logging
    # handler holds a closed trial log file; Ray forwards worker output to this process
    assert "ValueError when calling 'flush'" not in capfd.readouterr().err


def test_an_import_hashes_each_input_file_once_and_a_changed_file_again(
    mosaic, dataset_copy, tmp_path
):
    """The claim hashes the inputs and the reading needs their hashes too: each file's
    bytes are hashed once; a file rewritten afterwards (another size or time) is hashed
    anew, so a changed input is never taken for the one claimed."""
    from hrtem_ray.dataset import micrograph_files

    files, masks = _mosaic_files(mosaic, tmp_path, 3)
    micrograph_files._file_sha256.cache_clear()
    import_micrographs(files, dataset_copy, "once", masks=masks, pixel_size_angstrom=0.4)
    assert micrograph_files._file_sha256.cache_info().misses == len(files) + len(masks)
    before = micrograph_files.source_sha256(files[0])
    np.save(files[0], np.load(files[0])[::-1].copy())
    assert micrograph_files.source_sha256(files[0]) != before
