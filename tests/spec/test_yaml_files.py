"""Spec files are read strictly: duplicate keys and alias bombs are refused, errors are bounded.

Each refusal is checked through the command a user runs (``hrtem-ray ... SPEC``, called
in-process: exit 2, one ``error:`` line, nothing written) and through the library.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from hrtem_ray import cli
from hrtem_ray.exit_codes import EXIT_BAD_INPUT
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import MAX_ERROR_FIELDS, load_study_spec
from hrtem_ray.spec.yaml_files import (
    MAX_EXPANDED_NODES,
    MAX_YAML_BYTES,
    _StrictLoader,
    expanded_node_count,
    load_yaml_file,
    load_yaml_text,
)

REPO = Path(__file__).resolve().parents[2]

DUPLICATE = """\
name: dup
dataset:
  defocus_nm: [0, 10]
  seed: 1
  seed: 2
"""

#: Nine levels of nine aliases: 9^9 = 387,420,489 strings in about 400 bytes.
BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{new}: &{new} [{', '.join([f'*{old}'] * 9)}]\n"
        for old, new in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "name: *i\ndataset: {defocus_nm: [0, 10]}\n"
)


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``hrtem-ray ARGV`` in this process: its exit code and its stderr."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_a_duplicate_key_is_refused_naming_the_key_and_both_lines(tmp_path, capsys):
    spec = tmp_path / "dup.yaml"
    spec.write_text(DUPLICATE)
    with pytest.raises(SpecError, match=r"duplicate key 'seed' on lines 4 and 5"):
        load_study_spec(spec)
    out = tmp_path / "out"
    code, err = _run_cli(capsys, "simulate", str(spec), "--out", str(out))
    assert code == EXIT_BAD_INPUT
    assert err.count("error:") == 1 and "duplicate key 'seed' on lines 4 and 5" in err
    assert "Traceback" not in err and not out.exists()


def test_duplicate_keys_in_flow_style_and_nested_sections_are_refused():
    with pytest.raises(SpecError, match=r"duplicate key 'seed' twice on line 1"):
        load_yaml_text("dataset: {seed: 1, seed: 2}\n", "flow.yaml")
    nested = "pretrain:\n  lr: [0.001]\n  seeds: [0]\n  lr: [0.01]\n"
    with pytest.raises(SpecError, match=r"nested.yaml: duplicate key 'lr' on lines 2 and 4"):
        load_yaml_text(nested, "nested.yaml")
    # the same key in two different sections is fine, and so is a merge key's override
    text = "base: &base {lr: [0.001], seeds: [0]}\npretrain: {<<: *base, lr: [0.01]}\n"
    assert load_yaml_text(text, "merge.yaml")["pretrain"] == {"lr": [0.01], "seeds": [0]}


def test_an_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path, capsys):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(SpecError, match=r"aliases expand to more than 10,000 values") as info:
        load_study_spec(spec)
    assert time.perf_counter() - start < 1.0
    assert len(str(info.value)) < 300
    code, err = _run_cli(capsys, "sweep", str(spec), "--dry-run")
    assert code == EXIT_BAD_INPUT
    assert err.count("error:") == 1 and "alias bomb" in err and len(err) < 300


def test_a_recursive_alias_is_refused():
    with pytest.raises(SpecError, match="refers to a node that contains it"):
        load_yaml_text("a: &a [1, *a]\n", "loop.yaml")


def test_a_large_valid_expansion_below_the_limit_is_read():
    text = "x: &x [" + ", ".join(["1"] * 90) + "]\ny: [" + ", ".join(["*x"] * 100) + "]\n"
    raw = load_yaml_text(text, "ok.yaml")
    assert len(raw["y"]) == 100 and raw["y"][0] == [1] * 90


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "sweeps").glob("*.yaml")))
def test_every_preset_is_far_below_the_expansion_limit(preset):
    loader = _StrictLoader((REPO / "sweeps" / preset).read_text())
    try:
        nodes = expanded_node_count(loader.get_single_node())
    finally:
        loader.dispose()
    assert nodes < MAX_EXPANDED_NODES / 10
    load_study_spec(REPO / "sweeps" / preset)  # and still reads


def test_an_oversized_spec_file_is_refused_by_its_size(tmp_path):
    spec = tmp_path / "huge.yaml"
    spec.write_text("name: x\n#" + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(SpecError, match=r"bytes; a spec file may have at most 1,048,576"):
        load_yaml_file(spec)


def test_errors_echo_bounded_values_and_a_bounded_number_of_fields(tmp_path, capsys):
    """A value below the alias limit but long (5,283 characters when printed), and many
    invalid items: the message clips the echo and lists at most MAX_ERROR_FIELDS fields."""
    levels = (
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    )
    spec = tmp_path / "long.yaml"
    spec.write_text(levels + "name: *c\ndataset: {defocus_nm: [0, 10]}\n")
    with pytest.raises(SpecError) as info:
        load_study_spec(spec)
    assert "(5,283 characters)" in str(info.value) and len(str(info.value)) < 1500
    many = tmp_path / "many.yaml"
    raw = {"dataset": {"defocus_nm": [0, 10]}, "pretrain": {"seeds": ["x"] * 500}}
    many.write_text(yaml.safe_dump(raw))
    code, err = _run_cli(capsys, "sweep", str(many), "--dry-run")
    assert code == EXIT_BAD_INPUT
    assert err.count("error:") == 1 and f"... and {500 - MAX_ERROR_FIELDS:,} more" in err
    assert len(err) < cli.MAX_ERROR_CHARS


def test_the_cli_clips_any_long_error_line():
    line = cli.error_line(ValueError("x" * 100_000))
    assert line.startswith("error: xxx") and len(line) < cli.MAX_ERROR_CHARS + 40
    assert line.endswith("(100,007 characters)")
