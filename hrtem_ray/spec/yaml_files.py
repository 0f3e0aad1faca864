"""Reading the YAML files of hrtem-ray (study specs) strictly: no duplicate keys, no alias bombs.

PyYAML's ``safe_load`` lets the last of two equal keys win without a word (``lr:``
given twice in one section silently drops the first), and expands aliases as often as
they are referenced: nine levels of nine aliases (a few hundred bytes) stand for 9^9
values, which is harmless while the document is a shared Python graph but not once
anything walks or prints it (an error message that echoed such an input was 2.1 GB).

:func:`load_yaml_file` (and :func:`load_yaml_text`) therefore refuse, with a
:class:`~hrtem_ray.spec.base.SpecError` naming the file:

* a key given twice in one mapping, naming the key and both line numbers (merge keys
  ``<<:`` keep their override semantics);
* a document whose aliases expand to more than :data:`MAX_EXPANDED_NODES` nodes, or
  refer to themselves;
* a file larger than :data:`MAX_YAML_BYTES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from hrtem_ray.spec.base import SpecError, clip_text, echo

__all__ = ["MAX_EXPANDED_NODES", "MAX_YAML_BYTES", "load_yaml_file", "load_yaml_text"]

#: Largest number of YAML nodes a document may stand for once every alias is expanded.
#: The presets have 150 to 250 (``tests/spec/test_yaml_files.py`` counts them).
MAX_EXPANDED_NODES = 10_000
#: Largest spec file read (bytes); the presets are under 4 kB.
MAX_YAML_BYTES = 1_048_576

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKey(key, first_line[key], line)
                first_line[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping (turned into a SpecError naming the file)."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        where = (
            f"twice on line {first_line}"
            if first_line == second_line
            else f"on lines {first_line} and {second_line}"
        )
        super().__init__(f"duplicate key {echo(key, 60)} {where}")
        self.key, self.lines = key, (first_line, second_line)


def expanded_node_count(root: Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """How many nodes ``root`` stands for with every alias expanded (stops past ``limit``).

    Each distinct node is visited once (its expanded size is memoised), so an alias bomb
    is measured in microseconds, not expanded.

    Raises
    ------
    ValueError
        An alias refers to a node that contains it (an infinite expansion).
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise ValueError("an alias refers to a node that contains it (infinite expansion)")
        in_progress.add(key)
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                break
        in_progress.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document strictly (see the module docstring).

    Parameters
    ----------
    text
        The document.
    source
        Where it came from (a file name), for the error message.

    Raises
    ------
    SpecError
        Invalid YAML, a duplicate key, or aliases expanding past :data:`MAX_EXPANDED_NODES`.
    """
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        try:
            nodes = expanded_node_count(root)
        except ValueError as exc:
            raise SpecError(f"{source}: {exc}") from None
        if nodes > MAX_EXPANDED_NODES:
            raise SpecError(
                f"{source}: its aliases expand to more than {MAX_EXPANDED_NODES:,} values "
                f"(at most {MAX_EXPANDED_NODES:,} allowed; a spec needs a few hundred): "
                "refused as an alias bomb"
            )
        return loader.construct_document(root)
    except _DuplicateKey as exc:
        raise SpecError(
            f"{source}: {exc}; a key may appear once per section (the later one would "
            "silently replace the first)"
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source} is not valid YAML: {clip_text(str(exc), 500)}") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """Read a YAML file strictly (:func:`load_yaml_text`), refusing one over :data:`MAX_YAML_BYTES`.

    Raises
    ------
    SpecError
        The file is missing, too large, not UTF-8, or as :func:`load_yaml_text`.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"study spec not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise SpecError(
            f"{path}: {size:,} bytes; a spec file may have at most {MAX_YAML_BYTES:,} bytes"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return load_yaml_text(text, str(path))
