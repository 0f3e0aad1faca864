"""Materials in a spec: CIF files read while the spec is read, identity by content, and the
refusals of bad materials, shapes, surface energies and orientations (exit 2, field named)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import TINY_DATASET, TWO_MODEL_STUDY

from hrtem_ray import cli
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import load_dataset_spec, parse_dataset_spec, parse_study_spec
from hrtem_ray.spec.materials import IDENTITY, parse_miller

REPO = Path(__file__).resolve().parents[2]
SRTIO3 = REPO / "sweeps" / "materials" / "SrTiO3.cif"


def _dataset(**structures) -> dict:
    return {**TINY_DATASET, "structures": {**TINY_DATASET["structures"], **structures}}


def _write_study(folder: Path, **structures) -> Path:
    spec = {**TWO_MODEL_STUDY, "dataset": _dataset(**structures)}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_cif_path_is_relative_to_the_spec_file_and_stored_with_its_content(tmp_path, monkeypatch):
    (tmp_path / "materials").mkdir()
    shutil.copy(SRTIO3, tmp_path / "materials" / "perovskite.cif")
    spec_file = _write_study(tmp_path, lattices=[{"cif": "materials/perovskite.cif"}])
    monkeypatch.chdir(REPO)  # not the spec's folder
    spec = load_dataset_spec(spec_file)
    (material,) = spec.structures.lattices
    assert material.name == "SrTiO3" and material.spacegroup == 221
    assert sorted(material.symbols) == ["O", "O", "O", "Sr", "Ti"]
    # the stored form (dataset.json, study.json) is read back without the file
    stored = spec.model_dump(mode="json")
    (tmp_path / "materials" / "perovskite.cif").unlink()
    again = parse_dataset_spec(stored)
    assert again == spec and again.content_hash() == spec.content_hash()


def test_identity_is_the_content_not_the_path(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    shutil.copy(SRTIO3, tmp_path / "a" / "one.cif")
    shutil.copy(SRTIO3, tmp_path / "b" / "other_name.cif")
    first = parse_dataset_spec(_dataset(lattices=[{"cif": "one.cif"}]), base_dir=tmp_path / "a")
    second = parse_dataset_spec(_dataset(lattices=[{"cif": "b/other_name.cif"}]), base_dir=tmp_path)
    assert first.content_hash() == second.content_hash()
    assert first.waves_hash("all") == second.waves_hash("all")
    payload = first.hash_payload()["structures"]["lattices"][0]
    assert "cif" not in payload and payload["sha256"] == first.structures.lattices[0].sha256
    assert first.model_dump(mode="json", context=IDENTITY) == second.model_dump(
        mode="json", context=IDENTITY
    )
    # another content (a = 3.91 A) is another dataset
    text = SRTIO3.read_text().replace("3.905", "3.910")
    (tmp_path / "a" / "strained.cif").write_text(text)
    strained = parse_dataset_spec(
        _dataset(lattices=[{"cif": "strained.cif"}]), base_dir=tmp_path / "a"
    )
    assert strained.content_hash() != first.content_hash()
    # a pinned sha256 is checked against the file
    with pytest.raises(SpecError, match=r"lattices\.0\.cif: CIF one\.cif: sha256 .* differs"):
        parse_dataset_spec(
            _dataset(lattices=[{"cif": "one.cif", "sha256": "0" * 64}]), base_dir=tmp_path / "a"
        )


def test_cif_by_file_uri(tmp_path):
    shutil.copy(SRTIO3, tmp_path / "x.cif")
    spec = parse_dataset_spec(_dataset(lattices=["Au", {"cif": f"file://{tmp_path}/x.cif"}]))
    assert [getattr(m, "name", m) for m in spec.structures.lattices] == ["Au", "SrTiO3"]


def test_cif_on_s3(moto_endpoint, monkeypatch, tmp_path):
    """``{cif: s3://...}`` is read through the storage layer (moto on loopback); the same
    content has the same identity as the local file."""
    from helpers import make_bucket, s3_env

    from hrtem_ray.store import storage

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in s3_env(moto_endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{make_bucket(moto_endpoint)}/materials/SrTiO3.cif"
    storage.write_bytes_atomic(uri, SRTIO3.read_bytes())
    remote = parse_dataset_spec(_dataset(lattices=[{"cif": uri}]))
    local = parse_dataset_spec(_dataset(lattices=[{"cif": str(SRTIO3)}]))
    assert remote.structures.lattices[0].cif == uri
    assert remote.content_hash() == local.content_hash()
    with pytest.raises(SpecError, match=r"lattices\.0\.cif: CIF s3://.*/nope\.cif: no such file"):
        parse_dataset_spec(_dataset(lattices=[{"cif": uri.replace("SrTiO3", "nope")}]))


def test_new_structure_fields_at_their_defaults_keep_the_dataset_hash():
    """shape, orientation, twins, faults and stoichiometry came after datasets existed."""
    plain = parse_dataset_spec(TINY_DATASET)
    explicit = parse_dataset_spec(
        _dataset(
            shape="sphere",
            orientation="random",
            max_twins=0,
            max_fcc_stacking_faults=0,
            stoichiometry="auto",
        )
    )
    assert explicit.content_hash() == plain.content_hash()
    assert explicit.waves_hash("all") == plain.waves_hash("all")
    zone = parse_dataset_spec(_dataset(lattices=["Au"], orientation={"zone_axis": [[1, 1, 0]]}))
    assert zone.content_hash() != parse_dataset_spec(_dataset(lattices=["Au"])).content_hash()


def test_structure_domains_are_materials_times_shapes_times_sizes(tmp_path):
    shutil.copy(SRTIO3, tmp_path / "SrTiO3.cif")
    raw = {
        **TINY_DATASET,
        "axis": "structure",
        "defocus_nm": -10,
        "structures": {**TINY_DATASET["structures"], "cell_angstrom": 38.4},
        "structure_domains": {
            "Au-deca": {"lattice": "Au", "shape": "decahedron", "radius_angstrom": [6, 7]},
            "CeO2-cube": {"lattice": "CeO2", "shape": "cube", "radius_angstrom": [6, 7]},
            "STO-cube": {
                "lattice": {"cif": "SrTiO3.cif"},
                "shape": "cube",
                "radius_angstrom": [6, 7],
                "orientation": {"zone_axis": [[1, 0, 0]], "tilt_deg": 2},
            },
        },
    }
    spec = parse_dataset_spec(raw, base_dir=tmp_path)
    groups = dict(spec.groups_structures())
    assert groups["Au-deca"].shape == "decahedron" and groups["Au-deca"].lattices == ("Au",)
    assert groups["STO-cube"].lattices[0].name == "SrTiO3"
    assert groups["STO-cube"].orientation.tilt_deg == 2
    assert groups["CeO2-cube"].orientation == "random"  # the dataset's
    # a domain that sets nothing new keeps the earlier dump (no null fields)
    assert spec.model_dump(mode="json")["structure_domains"]["Au-deca"] == {
        "lattice": "Au",
        "radius_angstrom": [6.0, 7.0],
        "shape": "decahedron",
    }
    bad = {**raw, "structure_domains": {"ZnS-ico": {"lattice": "ZnS", "shape": "icosahedron", "radius_angstrom": [6, 7]}}}  # fmt: skip
    with pytest.raises(SpecError, match=r"structure_domains\.ZnS-ico: shape: shape icosahedron"):
        parse_dataset_spec(bad)


@pytest.mark.parametrize(
    ("structures", "message"),
    [
        (
            {"lattices": [{"cif": "garbage.cif"}]},
            r"dataset\.structures\.lattices\.0\.cif: CIF garbage\.cif: (ASE cannot read it|no crystal structure)",
        ),
        (
            {"lattices": [{"cif": "partial.cif"}]},
            r"lattices\.0\.cif: CIF partial\.cif: partial occupancy \(Ti1 0\.5\)",
        ),
        (
            {"lattices": [{"cif": "missing.cif"}]},
            r"lattices\.0\.cif: CIF missing\.cif: no such file",
        ),
        (
            {"lattices": [{"cif": "x.cif", "colour": "red"}]},
            r"lattices\.0\.cif: unknown key\(s\) \['colour'\]",
        ),
        ({"lattices": ["Unobtainium"]}, r"dataset\.structures\.lattices: unknown lattice"),
        ({"shapes": "cube"}, r"dataset\.structures\.shapes: Extra inputs are not permitted"),
        ({"shape": "pyramid"}, r"dataset\.structures\.shape: Input should be 'sphere'"),
        (
            {"lattices": ["Au"], "shape": "wulff", "surface_energies": {"111": 1.0, "100": -0.5}},
            r"dataset\.structures\.surface_energies: \(1 0 0\): -0\.5; surface energies must be > 0",
        ),
        (
            {"lattices": ["Au"], "shape": "wulff", "surface_energies": {"11": 1.0}},
            r"dataset\.structures\.surface_energies: '11': need 3 indices",
        ),
        (
            {"lattices": ["CdSe"], "shape": "icosahedron"},
            r"dataset\.structures\.shape: shape icosahedron needs an fcc crystal of one element.*CdSe \(space group 186\)",
        ),
        (
            {"lattices": ["TiO2-rutile"], "shape": "cube"},
            r"dataset\.structures\.shape: shape cube needs a cubic crystal.*TiO2-rutile \(space group 136\)",
        ),
        (
            {"lattices": [{"cif": "x.cif"}], "shape": "wulff"},
            r"surface_energies: shape wulff needs surface energies for \['SrTiO3'\]",
        ),
        (
            {"lattices": ["Au"], "orientation": {"zone_axis": [[0, 0, 0]]}},
            r"dataset\.structures\.orientation\.zone_axis: \[\[0, 0, 0\]\]: a zone axis",
        ),
        (
            {"lattices": ["Au"], "orientation": {"zone_axis": [[1, 1, 0]], "tilt_deg": 120}},
            r"dataset\.structures\.orientation\.tilt_deg: Input should be less than or equal to 90",
        ),
    ],
    ids=[
        "garbage-cif",
        "partial-occupancy",
        "missing-cif",
        "cif-unknown-key",
        "unknown-lattice",
        "unknown-key",
        "unknown-shape",
        "negative-surface-energy",
        "bad-miller",
        "icosahedron-of-wurtzite",
        "cube-of-rutile",
        "wulff-without-energies",
        "zero-zone-axis",
        "tilt-too-large",
    ],
)
def test_bad_materials_are_refused_naming_the_field(tmp_path, structures, message):
    _write_cif_fixtures(tmp_path)
    with pytest.raises(SpecError, match=message):
        parse_dataset_spec(_dataset(**structures), base_dir=tmp_path)


def _write_cif_fixtures(folder: Path) -> None:
    shutil.copy(SRTIO3, folder / "x.cif")
    (folder / "garbage.cif").write_bytes(b"this is \x00 not a CIF file\n")
    partial = SRTIO3.read_text().replace("Ti1 Ti 0.5 0.5 0.5 1.0", "Ti1 Ti 0.5 0.5 0.5 0.5")
    (folder / "partial.cif").write_text(partial)


@pytest.mark.parametrize(
    ("structures", "field"),
    [
        (
            {"lattices": [{"cif": "garbage.cif"}]},
            "dataset.structures.lattices.0.cif: CIF garbage.cif",
        ),
        ({"lattices": ["Au"], "unknown_key": 1}, "dataset.structures.unknown_key"),
        (
            {"lattices": ["Au"], "shape": "wulff", "surface_energies": {"111": -1}},
            "dataset.structures.surface_energies",
        ),
        ({"lattices": ["ZnS"], "shape": "icosahedron"}, "dataset.structures.shape"),
    ],
    ids=["bad-cif", "unknown-key", "negative-surface-energy", "icosahedron-of-wurtzite"],
)
def test_cli_refuses_bad_materials_with_exit_2_before_ray(tmp_path, capsys, structures, field):
    """One ``error:`` line naming the field; the unreachable address proves Ray was not
    contacted, and nothing is written."""
    _write_cif_fixtures(tmp_path)
    spec_file = _write_study(tmp_path, **structures)
    out = tmp_path / "out"
    for command in (["simulate", str(spec_file), "--out", str(out / "data")], ["run", str(spec_file), "--out", str(out), "--address", "127.0.0.1:1"]):  # fmt: skip
        code = cli.main(command)
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert field in err, err
    assert not out.exists()


def test_wulff_shape_that_does_not_close_is_refused_before_ray(tmp_path, capsys):
    """Surface energies of one facet family of a tetragonal crystal leave the shape open:
    refused by the preflight (it builds the Wulff construction) with exit 2."""
    spec_file = _write_study(
        tmp_path, lattices=["TiO2-rutile"], shape="wulff", surface_energies={"110": 1.0}
    )
    code = cli.main(["run", str(spec_file), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "dataset.structures: surface_energies" in err and "no closed Wulff shape" in err, err


def test_miller_indices_forms():
    assert parse_miller("111") == (1, 1, 1)
    assert parse_miller(111) == (1, 1, 1)  # an unquoted YAML key
    assert parse_miller("1 -1 0") == parse_miller("1-10") == parse_miller("(1,-1,0)") == (1, -1, 0)
    assert parse_miller([0, 0, -1]) == (0, 0, -1)
    assert parse_miller("10-10") == (1, 0, -1, 0)
    for bad in ("000", "1-1", "abc", "1 1 1 1"):
        with pytest.raises(ValueError):
            parse_miller(bad)


def test_study_spec_with_a_cif_round_trips_through_its_stored_form(tmp_path):
    shutil.copy(SRTIO3, tmp_path / "x.cif")
    raw = {**TWO_MODEL_STUDY, "dataset": _dataset(lattices=[{"cif": "x.cif"}], shape="cube")}
    spec = parse_study_spec(raw, base_dir=tmp_path)
    stored = spec.model_dump(mode="json")
    assert parse_study_spec(stored) == spec  # no file needed (study.json)


def test_a_moved_cif_claims_the_same_dataset_directory(tmp_path):
    """The stored dataset record holds the path it was read from; a spec reading the same
    content from elsewhere is no difference, another content is one (named)."""
    from hrtem_ray.dataset.claim import prepare_root, spec_differences
    from hrtem_ray.store import storage

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(SRTIO3, tmp_path / folder / "x.cif")
    first = parse_dataset_spec(_dataset(lattices=[{"cif": "x.cif"}]), base_dir=tmp_path / "a")
    moved = parse_dataset_spec(_dataset(lattices=[{"cif": "b/x.cif"}]), base_dir=tmp_path)
    root = tmp_path / "data"
    prepare_root(first, str(root))
    stored = storage.read_json(str(root / "dataset.json"))
    assert stored["spec"]["structures"]["lattices"][0]["cif"] == "x.cif"
    assert spec_differences(stored, moved) == []
    prepare_root(moved, str(root))  # claims it: the same dataset
    (tmp_path / "b" / "x.cif").write_text(SRTIO3.read_text().replace("3.905", "3.910"))
    edited = parse_dataset_spec(_dataset(lattices=[{"cif": "b/x.cif"}]), base_dir=tmp_path)
    assert [line.split(":")[0] for line in spec_differences(stored, edited)] == [
        "dataset.structures.lattices"
    ]
