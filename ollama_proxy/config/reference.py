"""README.md's configuration reference, derived from the schema.

``python -m ollama_proxy.config.reference`` prints one Markdown row per key of
:class:`~ollama_proxy.config.schema.ConfigFile` (``| key | accepts | default |``),
grouped by section; a test checks that README.md holds every row, so a key
cannot be added, or its range changed, without the README saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args, get_origin

import msgspec

from ollama_proxy.config.explain import bounds, is_struct, noun, unwrap
from ollama_proxy.config.schema import ConfigFile

_SYMBOLS = (("greater than ", "> "), ("at least ", "≥ "), ("at most ", "≤ "), ("less than ", "< "))


def accepts(annotation: Any) -> str:
    """What a key accepts, short enough for a table cell: "number > 0", "integer ≥ 1024"."""
    plain, metas = unwrap(annotation)
    words = noun(annotation)
    if any(m.description for m in metas):
        return words
    words = words.removeprefix("an ").removeprefix("a ")
    limit = bounds(annotation).replace("not negative", "≥ 0")
    for long, short in _SYMBOLS:
        limit = limit.replace(long, short)
    return f"{words} {limit}".strip()


def _default(value: Any, metas: list[msgspec.Meta]) -> str:
    given = next((m.extra["default"] for m in metas if m.extra and "default" in m.extra), None)
    if given is not None:
        return str(given)
    if value is None or value == () or value == {}:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def rows(struct: type = ConfigFile, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """``(key, accepts, default)`` for every key under ``struct``, in declaration order."""
    seen: dict[type, str] = {}
    yield from _rows(struct, prefix, seen)


def _rows(struct: type, prefix: str, seen: dict[type, str]) -> Iterator[tuple[str, str, str]]:
    for field in msgspec.structs.fields(struct):
        key = f"{prefix}{field.name}"
        plain, metas = unwrap(field.type)
        default = field.default if field.default is not msgspec.NODEFAULT else None
        if is_struct(plain):
            wider = next((name for kind, name in seen.items() if issubclass(kind, plain)), None)
            if wider is not None:  # [openai] and [anthropic]: the keys of [[providers]] but two
                yield key, f"a table: the keys of `{wider}` but {_missing(wider, plain, seen)}", _default(None, metas)
                continue
            seen[plain] = key
            yield from _rows(plain, f"{key}.", seen)
        elif get_origin(plain) is tuple and is_struct(unwrap(get_args(plain)[0])[0]):
            item = unwrap(get_args(plain)[0])[0]
            seen[item] = f"{key}[]"
            yield from _rows(item, f"{key}[].", seen)
        elif get_origin(plain) is dict:
            value = get_args(plain)[1]
            yield f"{key}.NAME", accepts(value), _default(None, unwrap(value)[1] + metas)
        else:
            yield key, accepts(field.type), _default(default, metas)


def _missing(wider: str, narrow: type, seen: dict[type, str]) -> str:
    kind = next(kind for kind, name in seen.items() if name == wider)
    narrow_fields = {field.name for field in msgspec.structs.fields(narrow)}
    names = [f"`{field.name}`" for field in msgspec.structs.fields(kind) if field.name not in narrow_fields]
    return " and ".join(names)


def table() -> str:
    """The reference as Markdown rows, a blank line between sections."""
    lines: list[str] = []
    section = None
    for key, kind, default in rows():
        top = key.split(".")[0].split("[")[0] if "." in key or "[" in key else ""
        if top != section and lines:
            lines.append("")
        section = top
        lines.append(f"| `{key}` | {kind} | {default} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("| key | accepts | default |\n| --- | --- | --- |")
    print(table())
