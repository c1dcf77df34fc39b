"""Words for the schema: what a key accepts, and what was wrong with a value.

msgspec reports where decoding stopped (``$.providers[0].timeouts.idle``) and the
kind of failure; the wording comes from the declared type itself, so a message
and the README's reference say the same thing about a key.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[(\.\.\.)\]")
_PLURAL = {str: "strings", int: "integers", float: "numbers"}
_GOT = {
    "str": "a string",
    "int": "an integer",
    "float": "a float",  # TOML's word for a number with a fraction or exponent
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}


def unwrap(annotation: Any) -> tuple[Any, list[msgspec.Meta]]:
    """The type inside ``Annotated`` and ``X | None``, with the ``Meta`` met on the way."""
    metas: list[msgspec.Meta] = []
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            metas.extend(m for m in extra if isinstance(m, msgspec.Meta))
        elif is_union(annotation) and type(None) in get_args(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return Union[tuple(members)], metas  # noqa: UP007 - built from a runtime tuple
            annotation = members[0]
        else:
            return annotation, metas


def is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)


def _number(value: float) -> str:
    return f"{value:g}"


def bounds(annotation: Any) -> str:
    """The range a number must lie in, as words ("greater than 0", "in (0, 1]"), or ""."""
    plain, metas = unwrap(annotation)
    low = next(((m.gt, "(") for m in metas if m.gt is not None), None) or next(
        ((m.ge, "[") for m in metas if m.ge is not None), None
    )
    high = next(((m.lt, ")") for m in metas if m.lt is not None), None) or next(
        ((m.le, "]") for m in metas if m.le is not None), None
    )
    if low and high:
        return f"in {low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}"
    if low and low[1] == "(":
        return f"greater than {_number(low[0])}"
    if low:
        return "not negative" if low[0] == 0 and plain is float else f"at least {_number(low[0])}"
    if high:
        return f"{'less than' if high[1] == ')' else 'at most'} {_number(high[0])}"
    return ""


def noun(annotation: Any) -> str:
    """What a key accepts, without its range: "a number", "a list of strings", ..."""
    plain, metas = unwrap(annotation)
    described = next((m.description for m in metas if m.description), None)
    if described:
        return described
    if is_union(plain):
        return _either([noun(member) for member in get_args(plain)])
    if get_origin(plain) is Literal:
        return _either([f'"{value}"' for value in get_args(plain)])
    if get_origin(plain) in (tuple, list):
        item = unwrap(get_args(plain)[0])[0]
        return "an array of tables" if is_struct(item) else f"a list of {_PLURAL.get(item, 'values')}"
    if get_origin(plain) is dict:
        value = unwrap(get_args(plain)[1])[0]
        return f"a table of {_PLURAL[value]}" if value in _PLURAL else "a table"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(plain, "a table" if is_struct(plain) else getattr(plain, "__name__", str(plain)))


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def explain(error: msgspec.ValidationError, raw: Any, root: Any) -> str:
    """One line naming the key and what is wrong with it."""
    try:
        return _explain(str(error), raw, root, "")
    except (KeyError, IndexError, StopIteration, TypeError, AttributeError):  # a shape not foreseen: msgspec's words
        return str(error)


def _explain(message: str, raw: Any, root: Any, prefix: str) -> str:
    problem, _, where = message.partition(" - at `")
    segments = [m.group(1) or m.group(2) or m.group(3) for m in _SEGMENT.finditer(where.rstrip("`")[1:])]
    key, annotation = prefix, root
    for segment in segments:
        plain, metas = unwrap(annotation)
        if any(m.description for m in metas) and key:
            return f"'{key}' must be {noun(annotation)}"
        if is_union(plain):  # a value that may be one of several shapes: go on with the one that has parts
            plain = next(m for m in (unwrap(a)[0] for a in get_args(plain)) if get_origin(m) or is_struct(m))
        if segment == "...":  # a table of named entries: find the entry that failed
            value_type = get_args(plain)[1]
            for name, value in (raw or {}).items():
                try:
                    msgspec.convert(value, value_type)
                except msgspec.ValidationError as inner:
                    return _explain(str(inner), value, value_type, f"{key}.{name}" if key else name)
            break
        if segment.isdigit():
            item = get_args(plain)[0]
            if not is_struct(unwrap(item)[0]):  # a list of plain values is named as a whole
                break
            key, annotation = f"{key}[{segment}]", item
            raw = raw[int(segment)] if isinstance(raw, list) and int(segment) < len(raw) else None
            continue
        declared = {field.name: field.type for field in msgspec.structs.fields(plain)}
        key, annotation = f"{key}.{segment}" if key else segment, declared[segment]
        raw = raw.get(segment) if isinstance(raw, dict) else None
    unknown = re.match(r"Object contains unknown field `(.*)`", problem)
    if unknown:
        return f"unknown key '{key}.{unknown.group(1)}'" if key else f"unknown key '{unknown.group(1)}'"
    got = re.match(r"Expected `[^`]*`, got `([^`]*)`", problem)
    if got:
        return f"'{key}' must be {noun(annotation)}, not {_GOT.get(got.group(1), got.group(1))}"
    limit = bounds(annotation)
    if problem.startswith("Expected") and limit and not any(m.description for m in unwrap(annotation)[1]):
        return f"'{key}' must {'not be negative' if limit == 'not negative' else 'be ' + limit}"
    return f"'{key}' must be {noun(annotation)}"
