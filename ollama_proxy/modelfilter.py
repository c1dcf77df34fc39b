"""Which upstream models the proxy may offer: ``allow`` and ``deny`` globs."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase


class ModelFilter:
    """A model passes when it matches an ``allow`` glob (or none are given) and
    no ``deny`` glob. Globs are matched against upstream ids, case-sensitively."""

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)

    def allows(self, model_id: str) -> bool:
        if self.allow and not any(fnmatchcase(model_id, glob) for glob in self.allow):
            return False
        return not any(fnmatchcase(model_id, glob) for glob in self.deny)

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)
