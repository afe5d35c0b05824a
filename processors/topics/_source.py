"""Read a YAML file into plain Python values, remembering the line of every key and item.

``yaml.safe_load`` forgets where things came from.  Here the document is composed into a
node tree (every node keeps its start mark) and built by hand, so that each path such as
``("apps", "payments", "dlq", "partitions")`` maps to the 1-based line it was written on.
The build also refuses what ``safe_load`` would silently accept: duplicate keys (the last
one would win), empty values and merge keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

__all__ = ["DocPath", "Problem", "Source", "SourceError", "read_source"]

DocPath = tuple[str | int, ...]
"""A location in the document: mapping keys and list indexes from the root."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a file, at a line (1-based)."""

    line: int
    reason: str
    file: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class SourceError(Exception):
    """The text is not a usable YAML document; ``problems`` say where."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Source:
    """A parsed document and the line of every key and list item in it."""

    file: str
    data: object
    lines: dict[DocPath, int]

    def line(self, path: DocPath) -> int:
        """Line of ``path``, or of its nearest ancestor that was written down."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return 1

    def problem(self, path: DocPath, reason: str) -> Problem:
        return Problem(line=self.line(path), reason=reason, file=self.file)


def read_source(text: str, file: str) -> Source:
    """Parse one YAML document; raise :class:`SourceError` for syntax or structure errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or "syntax error"
        if exc.context:
            what += f" ({exc.context})"
        raise SourceError([Problem(line, f"invalid YAML: {what}", file)]) from exc
    except yaml.YAMLError as exc:
        raise SourceError([Problem(1, f"invalid YAML: {exc}", file)]) from exc
    if root is None:
        raise SourceError([Problem(1, "the file is empty", file)])
    builder = _Builder(file)
    data = builder.build(root, ())
    if builder.problems:
        raise SourceError(sorted(builder.problems))
    return Source(file=file, data=data, lines=builder.lines)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[DocPath, int] = {(): 1}
        self.problems: list[Problem] = []
        self._scalars = SafeConstructor()

    def _fail(self, node: yaml.Node, reason: str) -> None:
        self.problems.append(Problem(node.start_mark.line + 1, reason, self.file))

    def build(self, node: yaml.Node, path: DocPath) -> object:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items: list[object] = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                items.append(self.build(item, (*path, index)))
            return items
        try:
            value = self._scalars.construct_object(node, deep=True)
        except ConstructorError as exc:
            self._fail(node, f"invalid YAML value: {exc.problem}")
            return None
        if value is None:
            self._fail(node, f"'{_label(path)}' has no value")
        return value

    def _mapping(self, node: yaml.MappingNode, path: DocPath) -> dict[object, object]:
        out: dict[object, object] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._fail(key_node, "merge keys (<<) are not supported; write the keys out")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, "mapping keys must be plain names")
                continue
            key = self._scalars.construct_object(key_node)
            if not isinstance(key, str | int) or isinstance(key, bool):
                key = str(key)
            if key in out:
                first = self.lines.get((*path, key), 0)
                self._fail(key_node, f"duplicate key '{key}' (first written on line {first})")
                continue
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*path, key))
        return out


def _label(path: DocPath) -> str:
    if not path:
        return "document"
    last = path[-1]
    return f"item {last}" if isinstance(last, int) else str(last)
