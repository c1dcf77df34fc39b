"""Which upstream models the proxy may offer: ``allow`` and ``deny`` globs.

The globs come from ``[filter]`` and from an optional filter file in the format
the reference proxy used: one model name or glob a line, ``!`` in front to
exclude, ``#`` starting a comment, blank lines ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any


def parse_filter_lines(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(allow, deny)`` globs from the text of a filter file."""
    allow: list[str] = []
    deny: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("!"):
            glob = line[1:].strip()
            if glob:
                deny.append(glob)
        else:
            allow.append(line)
    return tuple(allow), tuple(deny)


def parse_filter_file(path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(allow, deny)`` globs from a filter file; ``OSError`` when it cannot be read."""
    with open(path, encoding="utf-8") as handle:
        return parse_filter_lines(handle.read())


def _names_of(model: Any) -> tuple[str, ...]:
    """The spellings a glob may match: ``id``, ``id:latest``, ``provider/id``."""
    model_id = model.id
    names = [model_id]
    if ":" not in model_id.rsplit("/", 1)[-1]:
        names.append(f"{model_id}:latest")
    provider = getattr(model, "provider", None)
    if provider:
        names.append(f"{provider}/{model_id}")
    return tuple(names)


class ModelFilter:
    """A model passes when it matches an ``allow`` glob (or none are given) and
    no ``deny`` glob. Globs are matched against upstream ids, case-sensitively."""

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)

    def allows(self, model_id: str) -> bool:
        return self._passes((model_id,))

    def allows_model(self, model: Any) -> bool:
        """Like :meth:`allows` for an :class:`~ollama_proxy.wire.models.UpstreamModel`: a glob
        may also name it as ``id:latest`` or ``provider/id``."""
        if not (self.allow or self.deny):
            return True  # no filter (the usual case): no spellings to make, per route and model
        return self._passes(_names_of(model))

    def _passes(self, names: tuple[str, ...]) -> bool:
        if self.allow and not any(fnmatchcase(n, glob) for n in names for glob in self.allow):
            return False
        return not any(fnmatchcase(n, glob) for n in names for glob in self.deny)

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)
