"""The one safe-name rule: what it accepts and refuses, and the names made from any value."""

from __future__ import annotations

import pytest

from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.names import (
    EMPTY_SAFE_NAME,
    SAFE_NAME_MAX_LENGTH,
    check_safe_name,
    is_safe_name,
    to_safe_name,
)

SAFE = ["-10", "1e+06", "0.5", "-2.5", "CdSe-small", "laptop", "a_b"]
UNSAFE = ["../x", "..", "a..b", ".hidden", "_manifest", "a/b", "a\\b", "", " x", "a b", "x=1"]
UNSAFE += ["é", "a" * (SAFE_NAME_MAX_LENGTH + 1), "a\nb"]


@pytest.mark.parametrize("name", SAFE)
def test_safe_names_accept_domain_labels_and_ordinary_names(name):
    assert check_safe_name(name, "field") == name
    assert is_safe_name(name)


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused_with_the_field(name):
    assert not is_safe_name(name)
    with pytest.raises(SpecError, match=r"^report\.study: .*allowed: "):
        check_safe_name(name, "report.study")


def test_unsafe_name_without_a_field_is_a_value_error_with_the_problem_only():
    with pytest.raises(ValueError, match=r"^'\.\./x' contains '\.\.'; allowed: "):
        check_safe_name("../x")


@pytest.mark.parametrize("value", [*UNSAFE, None, 2.5, "._.", "a" * 127 + "..b", "x" * 500])
def test_names_made_from_any_value_follow_the_rule(value):
    assert is_safe_name(to_safe_name(value))


@pytest.mark.parametrize("name", SAFE)
def test_a_safe_name_is_made_unchanged(name):
    assert to_safe_name(name) == name


@pytest.mark.parametrize(
    ("value", "made"),
    [("../../x", "x"), ("a/b c", "a_b_c"), ("a..b", "a_b"), ("é", EMPTY_SAFE_NAME), (-10, "-10")],
)
def test_names_made_replace_unsafe_characters(value, made):
    assert to_safe_name(value) == made
