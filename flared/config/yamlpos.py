"""YAML loading that remembers where every value came from, within fixed bounds.

Validation errors must name ``FILE:LINE:COL`` for the field at fault, so the
loader builds plain Python data and, beside it, a map from each value's path
(``("bots", 1, "name")``) to its 1-based line and column.

A config file is input from anyone who can write it (or `PUT /config`), so
it is bounded before anything grows with it: its size (:data:`MAX_BYTES`),
how deep it nests (:data:`MAX_DEPTH`) and how many values it holds once
aliases and merge keys are expanded (:data:`MAX_VALUES`). A 600-byte alias
bomb stops at the limit instead of expanding to gigabytes, and a
self-referencing alias or 100,000 nested ``[`` is refused, not a
``RecursionError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_BYTES = 1024 * 1024  # a hermes-flare.yaml is a few KB
MAX_DEPTH = 64  # the schema nests about 6 deep
MAX_VALUES = 20_000  # after aliases and merges; a 100-bot config holds ~5,000
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Mark:
    line: int
    col: int


@dataclass
class Located:
    """Parsed YAML data plus the position of every value and every mapping key."""

    data: Any
    values: dict[Path, Mark] = field(default_factory=dict)
    keys: dict[Path, Mark] = field(default_factory=dict)
    duplicates: list[tuple[Path, Mark]] = field(default_factory=list)
    empty: bool = False  # no document at all: empty, blank or only comments

    def mark(self, path: Path, *, prefer_key: bool = False) -> Mark:
        """Best position for ``path``: the value, its key, or the nearest parent."""
        probe = tuple(path)
        while True:
            table = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            for t in table:
                if probe in t:
                    return t[probe]
            if not probe:
                return Mark(1, 1)
            probe = probe[:-1]


class YamlSyntaxError(Exception):
    def __init__(self, message: str, mark: Mark) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


def _mark(node: yaml.Node | yaml.Event) -> Mark:
    m = node.start_mark
    return Mark(m.line + 1, m.column + 1) if m is not None else Mark(1, 1)


def size_error(data: bytes | str) -> YamlSyntaxError | None:
    """The refusal for a file over :data:`MAX_BYTES`, at the line where it crosses the limit."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) <= MAX_BYTES:
        return None
    line = raw.count(b"\n", 0, MAX_BYTES) + 1
    return YamlSyntaxError(
        f"the file is larger than {MAX_BYTES // 1024} KiB (the limit is crossed on this line); "
        "a hermes-flare.yaml is a few KB: check that this is the right file",
        Mark(line, 1),
    )


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a depth and a node count checked while composing."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise YamlSyntaxError(_too_deep(), self._here())
            self.nodes += 1
            if self.nodes > MAX_VALUES:
                raise YamlSyntaxError(_too_many(), self._here())
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _here(self) -> Mark:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        return _mark(event)


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep; a hermes-flare.yaml needs fewer than 10"


def _too_many() -> str:
    return (
        f"more than {MAX_VALUES:,} values once aliases and merge keys are expanded "
        "(the limit that stops YAML alias bombs); write the values out, or use fewer nested aliases"
    )


def load(text: str) -> Located:
    """Parse one YAML document; raise :class:`YamlSyntaxError` with a position."""
    too_big = size_error(text)
    if too_big is not None:
        raise too_big
    if not text.strip():  # tabs on blank lines would otherwise be a syntax error
        return Located(data={}, empty=True)
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        located = Located(data=None)
        if root is None:
            located.data, located.empty = {}, True
        else:
            located.data = _Builder(loader, located).build(root, ())
        return located
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        where = Mark(m.line + 1, m.column + 1) if m else Mark(1, 1)
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}: {problem}" if problem else exc.context
        raise YamlSyntaxError(f"YAML syntax error: {problem}", where) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"YAML error: {exc}", Mark(1, 1)) from None
    except RecursionError:  # a safety net: the bounds above should make this unreachable
        raise YamlSyntaxError(_too_deep(), Mark(1, 1)) from None
    finally:
        loader.dispose()


class _Builder:
    """Nodes to plain data, counting every value it makes (aliases included)."""

    def __init__(self, loader: yaml.SafeLoader, out: Located) -> None:
        self.loader = loader
        self.out = out
        self.made = 0
        self.active: set[int] = set()  # nodes being built: an alias back into one is a cycle
        self.built: set[int] = set()  # collections built once: meeting one again is an alias
        self.site: Mark | None = None  # where the outermost alias being expanded sits
        self.merged: dict[int, tuple[list[tuple[yaml.Node, yaml.Node]], int]] = {}

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.made += 1
        if self.made > MAX_VALUES:
            raise YamlSyntaxError(_too_many(), self.site or _mark(node))
        if len(path) > MAX_DEPTH:
            raise YamlSyntaxError(_too_deep() + " (counting what aliases bring in)", _mark(node))
        self.out.values[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node, deep=True)
        if id(node) in self.active:
            raise YamlSyntaxError("an alias refers to a value that contains it (a cycle)", _mark(node))
        outer_alias = self.site is None and id(node) in self.built
        if outer_alias:
            self.site = self.out.values.get(path[:-1], _mark(node))
        self.active.add(id(node))
        self.built.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self.loader.construct_object(node, deep=True)
        finally:
            self.active.discard(id(node))
            if outer_alias:
                self.site = None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        pairs, explicit = self._pairs(node)
        for i, (key_node, value_node) in enumerate(pairs):
            key = self._key(key_node)
            child = (*path, key)
            if key in result and i < explicit:  # merged keys never repeat an earlier key
                self.out.duplicates.append((child, _mark(key_node)))
            self.out.keys[child] = _mark(key_node)
            result[key] = self.build(value_node, child)
        return result

    def _key(self, key_node: yaml.Node) -> str:
        if not isinstance(key_node, yaml.ScalarNode):  # before constructing: a key can be a bomb too
            raise YamlSyntaxError("mapping keys must be plain scalars", _mark(key_node))
        key = self.loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise YamlSyntaxError("mapping keys must be plain scalars", _mark(key_node))
        return key if isinstance(key, str) else str(key)

    def _pairs(self, node: yaml.MappingNode) -> tuple[list[tuple[yaml.Node, yaml.Node]], int]:
        """The mapping's pairs and how many of them are its own: its own pairs first,
        then each key that `<<` merge keys bring in and it does not set itself.

        That is YAML's precedence: explicit keys, then earlier merge sources.
        Each mapping is resolved once, so chained merges stay linear.
        """
        done = self.merged.get(id(node))
        if done is not None:
            return done
        explicit: list[tuple[yaml.Node, yaml.Node]] = []
        sources: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                if isinstance(value_node, yaml.SequenceNode):
                    sources.extend(value_node.value)
                else:
                    sources.append(value_node)
            else:
                explicit.append((key_node, value_node))
        pairs = list(explicit)
        keys = {self._key(k) for k, _ in explicit}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise YamlSyntaxError("`<<` merges only mappings (or a list of mappings)", _mark(source))
            if id(source) in self.active or source is node:
                raise YamlSyntaxError("a merge key refers to the mapping that contains it", _mark(source))
            self.active.add(id(source))
            try:
                inherited, _ = self._pairs(source)
            finally:
                self.active.discard(id(source))
            for k, v in inherited:
                self.made += 1
                if self.made > MAX_VALUES:
                    raise YamlSyntaxError(_too_many(), self.site or _mark(source))
                name = self._key(k)
                if name not in keys:
                    keys.add(name)
                    pairs.append((k, v))
        self.merged[id(node)] = (pairs, len(explicit))
        return pairs, len(explicit)


def dotted(path: Path) -> str:
    """``("bots", 1, "name")`` -> ``bots[1].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"
