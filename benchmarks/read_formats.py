"""Reading real microscope files: per-file read time, calibration and imaging mode; prints JSON.

Reads every file of a folder (default ``../shared/real_em/formats``, the real DM3/DM4,
TIA SER/EMI, Berkeley and Velox EMD and HyperSpy files gathered with their sources in its
README) with :func:`hrtem_ray.dataset.micrograph_files.read_micrograph`, as ``hrtem-ray
import`` and ``predict`` do, and records for each: what was read (shape, data type, pixel
size in Å, where the calibration came from, the imaging mode its metadata record, the
warning given) or why it was refused, and the read time (best of ``--repeats`` reads,
after a first read that also pays for importing the RosettaSciIO plugin, reported as
``first_read_seconds``). Where the folder's README states a file's shape, data type and
pixel size (:data:`STATED`), ``matches_readme`` says whether the read agrees (pixel size
to 1e-4 relative, the digits the README gives).

Usage::

    python benchmarks/read_formats.py --out benchmarks/results/read_formats.json
    python benchmarks/read_formats.py --quick          # files under 1 MB only
    python benchmarks/read_formats.py --dir my_files/  # any folder of micrographs
"""

from __future__ import annotations

import platform
import time
import warnings
from pathlib import Path

import common

from hrtem_ray.dataset.micrograph_files import (
    FORMATS,
    MicrographError,
    MicrographWarning,
    read_micrograph,
)

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "real_em" / "formats"

#: Shape, data type and pixel size (Å) of the images as ../shared/real_em/README.md states them.
STATED: dict[str, tuple[tuple[int, int], str, float]] = {
    "multi_signal.dm3": ((512, 512), "uint16", 0.17752),
    "test_STEM_image.dm3": ((68, 68), "uint32", 2.48538),
    "JEOL HAADF Image.dm4": ((112, 112), "float32", 12.49),
    "example_Se_implanted_MoS2.dm3": ((1024, 1024), "uint32", 0.126953),
    "16_STOimage_1.ser": ((1024, 1024), "uint16", 0.100127),
    "16_STOimage.emi": ((1024, 1024), "uint16", 0.100127),
    "Acquisition_18.emd": ((1024, 1024), "uint16", 0.12247),
    "example_Au_nanoparticle.emd": ((2048, 2048), "uint16", 0.074984),
    "SiO2 HAADF Image.hspy": ((128, 128), "float32", 85.52),
}


def read_once(path: Path) -> tuple[dict, float]:
    """One read of ``path``: what it gave (or why it was refused) and its seconds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            micrograph = read_micrograph(path)
        except MicrographError as error:
            seconds = time.perf_counter() - start
            return {"status": "refused", "error": str(error).removeprefix(f"{path}: ")}, seconds
        seconds = time.perf_counter() - start
    said = [str(w.message).removeprefix(f"{path}: ") for w in caught]
    return {
        "status": "read",
        "shape": list(micrograph.image.shape),
        "dtype": micrograph.dtype,
        "pixel_size_angstrom": micrograph.pixel_size_angstrom,
        "calibration": micrograph.calibration,
        "imaging": micrograph.imaging,
        "warning": [
            s for s, w in zip(said, caught, strict=True) if w.category is MicrographWarning
        ],
    }, seconds


def matches_readme(name: str, record: dict) -> bool | None:
    """Whether the read agrees with the README's shape, type and pixel size (None: not stated)."""
    if name not in STATED:
        return None
    shape, dtype, pixel = STATED[name]
    if record["status"] != "read":
        return False
    close = abs(record["pixel_size_angstrom"] - pixel) <= 1e-4 * pixel
    return record["shape"] == list(shape) and record["dtype"] == dtype and close


def measure(path: Path, repeats: int) -> dict:
    """The record of one file: bytes, reader, outcome, read times, agreement with the README."""
    record, first = read_once(path)
    times = [read_once(path)[1] for _ in range(repeats)]
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "readers": list(FORMATS[path.suffix.lower()]),
        **record,
        "first_read_seconds": round(first, 4),
        "read_seconds": round(min(times), 4),
        "matches_readme": matches_readme(path.name, record),
    }


def main() -> None:
    args = common.parser(__doc__, "files under 1 MB only")
    args.add_argument("--dir", default=str(DEFAULT_DIR), help="folder of microscope files")
    args.add_argument("--repeats", type=int, default=3, help="timed reads per file (best kept)")
    opts = args.parse_args()
    folder = Path(opts.dir)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FORMATS)
    if opts.quick:
        files = [p for p in files if p.stat().st_size < 1 << 20]
    records = [measure(path, opts.repeats) for path in files]
    stated = [r["matches_readme"] for r in records if r["matches_readme"] is not None]
    report = {
        "benchmark": "read_formats",
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "folder": str(folder),
        "files": len(records),
        "read": sum(r["status"] == "read" for r in records),
        "refused": sum(r["status"] == "refused" for r in records),
        "warned": sum(bool(r.get("warning")) for r in records),
        "matching_readme": f"{sum(stated)} of {len(stated)}",
        "records": records,
    }
    common.emit(report, opts.out)


if __name__ == "__main__":
    main()
