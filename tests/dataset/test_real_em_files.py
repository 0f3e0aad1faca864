"""Real microscope files (``tests/data/real_em``, sources and licences in its README) read
through :mod:`hrtem_ray.dataset.micrograph_files`: shape, data type and pixel size as the
files' sources state them, the imaging mode their metadata record, and what is refused
with what message. Files written here go through RosettaSciIO's own writers from a real
image, so that every plugin with a writer is read on real pixels and metadata too.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from hrtem_ray.dataset.micrograph_files import (
    FORMATS,
    IMAGE_PLUGINS,
    OTHER_PLUGINS,
    MicrographError,
    MicrographWarning,
    duplicate_messages,
    imaging_mode,
    mask_fractions,
    parse_unit,
    read_mask,
    read_micrograph,
)

REAL = Path(__file__).resolve().parents[1] / "data" / "real_em"

# (file, shape, data type, pixel size in Å, imaging the metadata record): shape, type and
# pixel size as tests/data/real_em/README.md (from ../shared/real_em/README.md) states them,
# to the digits it gives (hence rel=1e-4)
REAL_IMAGES = [
    ("test_STEM_image.dm3", (68, 68), "uint32", 2.48538, "STEM (operation mode: SCANNING"),
    ("JEOL HAADF Image.dm4", (112, 112), "float32", 12.49, "dark-field STEM (title"),
    ("16_STOimage_1.ser", (1024, 1024), "uint16", 0.100127, ""),  # its .emi is not here
    ("Acquisition_18.emd", (1024, 1024), "uint16", 0.12247, "STEM (dwell time"),
    ("SiO2 HAADF Image.hspy", (128, 128), "float32", 85.52, "dark-field STEM (title"),
    ("SiO2 HAADF Image.zspy", (128, 128), "float32", 85.52, "dark-field STEM (title"),
]


def _read(path, pixel_size_angstrom=None):
    """``read_micrograph`` and the MicrographWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        micrograph = read_micrograph(path, pixel_size_angstrom)
    return micrograph, [str(w.message) for w in caught if w.category is MicrographWarning]


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "pixel_angstrom", "imaging"),
    REAL_IMAGES,
    ids=[r[0] for r in REAL_IMAGES],
)
def test_real_files_read_with_their_stated_shape_type_and_pixel_size(
    name, shape, dtype, pixel_angstrom, imaging
):
    micrograph, warned = _read(REAL / name)
    assert micrograph.image.shape == shape and micrograph.image.dtype == np.float32
    assert micrograph.dtype == dtype
    assert micrograph.pixel_size_angstrom == pytest.approx(pixel_angstrom, rel=1e-4)
    assert micrograph.calibration.startswith("file (")
    assert micrograph.imaging.startswith(imaging)
    assert np.isfinite(micrograph.image).all() and micrograph.image.std() > 0
    if imaging:  # a STEM image: the user is told, naming the file
        (message,) = warned
        assert "phase-contrast bright-field HRTEM images the models were trained on" in message
        kind = "a dark-field STEM image" if imaging.startswith("dark") else "a STEM image"
        assert message.startswith(f"{REAL / name}: {kind} (")
    else:
        assert warned == []


def test_the_calibration_units_real_files_write():
    """n_m (ncempy), µm with the micro sign (DM4, HyperSpy), metres (TIA) all read as lengths."""
    units = {
        "Acquisition_18.emd": "file (n_m)",
        "JEOL HAADF Image.dm4": "file (µm)",
        "SiO2 HAADF Image.hspy": "file (µm)",
        "16_STOimage_1.ser": "file (nm)",  # RosettaSciIO converts TIA's metres to nm
    }
    for name, calibration in units.items():
        assert _read(REAL / name)[0].calibration == calibration, name


@pytest.mark.parametrize(
    ("text", "kind", "angstrom"),
    [
        ("n_m", "length", 10.0),
        ("nm", "length", 10.0),
        ("\u00b5m", "length", 1e4),  # micro sign
        ("\u03bcm", "length", 1e4),  # Greek mu
        ("um", "length", 1e4),
        ("\\u00B5m", "length", 1e4),  # ImageJ's escape
        ("micron", "length", 1e4),
        ("m", "length", 1e10),
        ("meters", "length", 1e10),
        ("\u212b", "length", 1.0),  # Ångström sign
        ("\u00c5", "length", 1.0),  # Latin capital A with ring
        ("A", "length", 1.0),
        ("pm", "length", 0.01),
        ("1/nm", "reciprocal", 10.0),
        ("nm^-1", "reciprocal", 10.0),
        ("1/\u00c5", "reciprocal", 1.0),
        ("mrad", "angle", None),
        ("eV", "other", None),
        ("", "none", None),
        ("px", "none", None),
        ("<undefined>", "none", None),
    ],
)
def test_units_are_parsed_as_files_write_them(text, kind, angstrom):
    unit = parse_unit(text)
    assert (unit.kind, unit.angstrom) == (kind, angstrom)


@pytest.mark.parametrize("given", [None, 1.0], ids=["uncalibrated fallback unset", "set"])
def test_a_diffraction_pattern_is_refused_as_such_even_with_a_pixel_size(given):
    with pytest.raises(MicrographError) as error:
        read_micrograph(REAL / "test_diffraction_pattern.dm3", given)
    message = str(error.value)
    assert message.startswith(f"{REAL / 'test_diffraction_pattern.dm3'}: a diffraction pattern")
    assert "1/nm" in message and "reciprocal space" in message and "uncalibrated" not in message


def test_an_uncalibrated_pattern_taken_in_diffraction_mode_is_refused(tmp_path):
    """The real DM3 pattern with its 1/nm calibration removed, saved as .hspy with its
    DigitalMicrograph tags: the tags' operation mode DIFFRACTION still refuses it."""
    from rsciio.digitalmicrograph import file_reader
    from rsciio.hspy import file_writer

    (signal,) = file_reader(str(REAL / "test_diffraction_pattern.dm3"))
    for axis in signal["axes"]:
        axis.update(scale=1.0, units="")
    path = tmp_path / "pattern.hspy"
    hyperspy = {  # the parts of a HyperSpy signal the writer expects besides RosettaSciIO's
        "tmp_parameters": {},
        "learning_results": {},
        "models": {},
        "attributes": {"_lazy": False},
        "package_info": {"name": "", "version": ""},
    }
    file_writer(str(path), {**signal, **hyperspy})
    with pytest.raises(MicrographError, match=r"a diffraction pattern \(operation mode: DIFFR"):
        read_micrograph(path, 1.0)


def _signal(title="", **original):
    return {"metadata": {"General": {"title": title}}, "original_metadata": original}


@pytest.mark.parametrize(
    ("signal", "kind"),
    [
        (_signal("HAADF"), "dark-field"),
        (_signal("x", BinaryResult={"Detector": "DF4"}), "dark-field"),
        (_signal("x", BinaryResult={"Detector": "BF"}, Scan={"DwellTime": 1e-6}), "bright-field"),
        # a camera named, a dwell time stored: no guess of a scan
        (_signal("x", BinaryResult={"Detector": "BM-Ceta"}, Scan={"DwellTime": 1e-6}), ""),
        (_signal("x", Scan={"DwellTime": 1e-6}), "stem"),
        (_signal("PDF of spacing"), ""),  # DF inside a word is no detector
        (_signal("HRTEM 0.5 s"), ""),
    ],
)
def test_imaging_mode_from_detector_title_and_scan_fields(signal, kind):
    assert imaging_mode(signal).kind == kind


def test_a_spectrum_is_refused_saying_what_the_file_holds():
    with pytest.raises(
        MicrographError,
        match=r"no 2-D image in the file: it holds EELS data of shape \(1, 2048\) \(axes in eV\)",
    ):
        read_micrograph(REAL / "08_carbon.dm3", 1.0)


def test_colour_scribbles_are_refused_as_a_mask():
    with pytest.raises(MicrographError, match=r"trainingmask.png is a colour image \(3 colours"):
        read_mask(REAL / "trainingmask.png", (128, 128))


def test_the_same_image_in_two_formats_is_found():
    """The .hspy and the .zspy hold the same image in files of different bytes."""
    hspy, _ = _read(REAL / "SiO2 HAADF Image.hspy")
    zspy, _ = _read(REAL / "SiO2 HAADF Image.zspy")
    assert hspy.sha256 != zspy.sha256 and hspy.image_sha256 == zspy.image_sha256
    (message,) = duplicate_messages([hspy, zspy], {}, "exp")
    assert message == f"{zspy.source}: the same image as {hspy.source} in this import; its " + (
        "tiles may land in both train and val"
    )
    (earlier,) = duplicate_messages([zspy], {hspy.image_sha256: [("exp_a", hspy.name)]}, "exp_b")
    assert "imported before as SiO2 HAADF Image.hspy in domain 'exp_a'" in earlier


def test_a_directory_zspy_store_is_claimed_by_the_hash_its_shards_record(tmp_path):
    """HyperSpy saves .zspy as a directory by default; an import's claim hashed only plain
    files and refused such a store as "no such file" before reading it."""
    import zipfile

    from hrtem_ray.dataset.micrographs import _file_inputs

    store = tmp_path / "SiO2.zspy"
    with zipfile.ZipFile(REAL / "SiO2 HAADF Image.zspy") as archive:
        archive.extractall(store)
    assert store.is_dir()
    micrograph, _ = _read(store)
    zipped, _ = _read(REAL / "SiO2 HAADF Image.zspy")
    assert micrograph.image_sha256 == zipped.image_sha256  # the same image, another layout
    (claimed,) = _file_inputs([store])
    assert claimed == {"name": "SiO2.zspy", "sha256": micrograph.sha256}
    with pytest.raises(MicrographError, match="no such file"):
        _file_inputs([tmp_path / "missing.zspy"])


# RosettaSciIO plugins with a lossless writer of 2-D images: (plugin module, extension); the
# DigitalSurf writer stores fixed-point integers (and overflowed one pixel of this image)
WRITERS = [("semper", ".unf"), ("ripple", ".rpl"), ("emd", ".emd"), ("tiff", ".tif")]


@pytest.mark.parametrize(("module", "suffix"), WRITERS, ids=[w[0] for w in WRITERS])
def test_a_real_image_written_by_each_rosettasciio_writer_reads_back(tmp_path, module, suffix):
    """The real SiO2 image and its µm calibration, written by the plugin's own writer."""
    from rsciio.hspy import file_reader

    signal = file_reader(str(REAL / "SiO2 HAADF Image.hspy"))[0]
    path = tmp_path / f"sio2{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writers' notes on metadata they drop
        importlib.import_module(f"rsciio.{module}").file_writer(str(path), signal)
    micrograph, _ = _read(path)
    assert micrograph.pixel_size_angstrom == pytest.approx(85.52446, rel=1e-6)
    np.testing.assert_allclose(micrograph.image, signal["data"], rtol=1e-6)


def test_every_rosettasciio_plugin_is_either_read_or_set_aside_with_a_reason():
    from rsciio import IO_PLUGINS

    names = {p["name"] for p in IO_PLUGINS}
    assert set(IMAGE_PLUGINS) | set(OTHER_PLUGINS) == names
    assert not set(IMAGE_PLUGINS) & set(OTHER_PLUGINS)
    for ext in (".dm3", ".dm4", ".ser", ".emi", ".emd", ".hspy", ".zspy", ".mrc", ".tif", ".npy"):
        assert FORMATS[ext], ext
    assert FORMATS[".mrc"] == ("mrc", "mrcz") and FORMATS[".hdf5"][0] == "hspy"
    assert ".xml" not in FORMATS and ".csv" not in FORMATS  # spectra and logs only


def test_a_plugin_without_its_optional_package_says_which(tmp_path):
    """MRCZ needs the package mrcz (not a dependency): the error names it, installed or not."""
    path = tmp_path / "a.mrcz"
    path.write_bytes(b"\0" * 1024)
    with pytest.raises(MicrographError, match=r"a\.mrcz: .*mrcz"):
        read_micrograph(path, 1.0)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 1, 0], [0, 1, 1, 0]),
        ([0.0, 0.25, 0.97], [0.0, 0.25, 0.97]),
        ([0, 255, 255, 0], [0, 1, 1, 0]),
        ([0, 51, 255], [0, 0.2, 1]),  # 8-bit soft
    ],
)
def test_mask_values_that_are_a_mask(values, expected):
    out = mask_fractions(np.array(values, np.float32))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([7, 7, 7, 7], "values 7 are not a mask"),  # a label map of 7s (was a 0.027 soft mask)
        ([0, 7, 7, 0], "values 0, 7 are not"),
        ([0, 1, 2, 3], "values 0, 1, 2, 3 are not"),  # instance labels
        ([0, 65535], "values 0, 65535 are not"),  # 16-bit
        ([-1, 0, 1], "values -1, 0, 1 are not"),
        ([0, 0.5, np.nan], "nan"),
    ],
)
def test_mask_values_that_are_not_a_mask_are_refused_by_the_stated_rule(values, shown):
    with pytest.raises(MicrographError, match="allowed: fractions in") as error:
        mask_fractions(np.array(values, np.float64), "m.png")
    assert str(error.value).startswith("mask m.png: ") and shown in str(error.value)
