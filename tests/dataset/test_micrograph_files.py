"""Reading microscope files: every format and its calibration, masks.

Every file is written from this project's own simulated images (the tiny dataset, 0.4 Å
per pixel) by a maintained writer (tifffile, mrcfile, RosettaSciIO, Pillow, numpy) and
read back through :mod:`hrtem_ray.dataset.micrograph_files`. DM3/DM4 are not tested:
RosettaSciIO cannot write them and no installed package ships a DM3/DM4 file (see the
README).
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import tifffile
from PIL import Image

from hrtem_ray.dataset.micrograph_files import MicrographError, read_mask, read_micrograph

PIXEL_ANGSTROM = 0.4  # the tiny dataset's output sampling


def _axes(shape, scale_nm):
    return [
        {"name": n, "scale": scale_nm, "offset": 0.0, "size": s, "units": "nm", "navigate": False}
        for n, s in zip(("y", "x"), shape, strict=True)
    ]


def _signal(image, scale_nm):
    return {
        "data": image,
        "axes": _axes(image.shape, scale_nm),
        "metadata": {"General": {"title": "simulated"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
    }


def _uint8(image):
    lo, hi = float(image.min()), float(image.max())
    return np.round((image - lo) / (hi - lo) * 255).astype(np.uint8)


# (writer name, file name, writer, pixel size to pass or None, value tolerance)
def _write_tiff_cm(path, image):
    cm = PIXEL_ANGSTROM * 1e-8
    tifffile.imwrite(path, image, resolution=(1 / cm, 1 / cm), resolutionunit="CENTIMETER")


def _write_imagej(unit, per_angstrom):
    def write(path, image):
        size = PIXEL_ANGSTROM * per_angstrom
        tifffile.imwrite(
            path, image, imagej=True, resolution=(1 / size, 1 / size), metadata={"unit": unit}
        )

    return write


def _write_mrc(path, image):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(image)
        mrc.voxel_size = PIXEL_ANGSTROM


def _write_rsciio(module):
    def write(path, image):
        import importlib

        importlib.import_module(f"rsciio.{module}").file_writer(
            str(path), _signal(image, PIXEL_ANGSTROM / 10)
        )

    return write


def _write_pil(path, image):
    Image.fromarray(_uint8(image)).save(path)


FORMAT_CASES = [
    ("tifffile resolution tags (cm)", "a.tif", _write_tiff_cm, None),
    ("tifffile ImageJ nm", "b.tif", _write_imagej("nm", 0.1), None),
    ("tifffile ImageJ Å", "c.tiff", _write_imagej("\\u00C5", 1.0), None),
    ("tifffile ImageJ µm", "d.tif", _write_imagej("micron", 1e-4), None),
    ("mrcfile", "e.mrc", _write_mrc, None),
    ("RosettaSciIO TIFF", "f.tif", _write_rsciio("tiff"), None),
    ("RosettaSciIO EMD (Berkeley)", "g.emd", _write_rsciio("emd"), None),
    ("numpy", "h.npy", lambda p, im: np.save(p, im), PIXEL_ANGSTROM),
    ("Pillow PNG", "i.png", _write_pil, PIXEL_ANGSTROM),
    ("Pillow JPEG", "j.jpg", _write_pil, PIXEL_ANGSTROM),
]


@pytest.mark.parametrize(
    ("writer", "name", "write", "given"), FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES]
)
def test_each_format_reads_back_with_its_pixel_size(mosaic, tmp_path, writer, name, write, given):
    image, _ = mosaic
    path = tmp_path / name
    write(path, image)
    micrograph = read_micrograph(path, given)
    assert micrograph.image.shape == image.shape, writer
    assert micrograph.pixel_size_angstrom == pytest.approx(PIXEL_ANGSTROM, rel=1e-5), writer
    if given is None:
        assert micrograph.calibration.startswith("file"), micrograph.calibration
    else:
        assert micrograph.calibration == "--pixel-size-angstrom"
    if path.suffix in (".png", ".jpg"):  # 8-bit: compare with the 8-bit image
        tolerance = 0 if path.suffix == ".png" else 12  # JPEG is lossy
        error = np.abs(micrograph.image - _uint8(image).astype(np.float32)).mean()
        assert error <= tolerance, (writer, error)
    else:
        np.testing.assert_allclose(micrograph.image, image, rtol=1e-6, atol=1e-6, err_msg=writer)


def test_missing_calibration_asks_for_the_pixel_size(mosaic, tmp_path):
    image, _ = mosaic
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image)  # no resolution unit: uncalibrated
    with pytest.raises(MicrographError, match="--pixel-size-angstrom"):
        read_micrograph(path)
    assert read_micrograph(path, 0.25).pixel_size_angstrom == 0.25


def test_the_file_calibration_wins_over_the_fallback(mosaic, tmp_path):
    image, _ = mosaic
    path = tmp_path / "cal.mrc"
    _write_mrc(path, image)
    assert read_micrograph(path, 3.0).pixel_size_angstrom == pytest.approx(PIXEL_ANGSTROM)


def test_read_mask_scales_0_255_and_checks_the_shape(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    assert read_mask(path, (8, 8)).max() == 1.0 and read_mask(path, (8, 8)).sum() == 9
    with pytest.raises(MicrographError, match="has shape"):
        read_mask(path, (8, 9))
