"""``GET /api/usage``: its parameters, the SQL they become, and the JSON rows.

Filters: ``since`` and ``until`` (a date ``2026-11-30``, a UTC time
``2026-11-30T12:00:00Z`` or epoch seconds; ``until`` is exclusive), ``token``,
``model``; ``group_by`` is a comma-separated subset of :data:`GROUPS` (default
``token,model,provider,day``; empty for one line of totals).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.ledger.schema import Dialect

GROUPS: tuple[str, ...] = ("token", "model", "provider", "upstream_model", "surface", "day")
DEFAULT_GROUPS: tuple[str, ...] = ("token", "model", "provider", "day")
_FILTERS = ("since", "until", "token", "model", "group_by")
_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]00:?00)?)?")


@dataclass(frozen=True)
class UsageQuery:
    """A validated ``/api/usage`` request. ``token`` is forced to the caller's own
    name for a client token (see :meth:`restricted_to`)."""

    since: float | None = None
    until: float | None = None
    token: str | None = None
    model: str | None = None
    group_by: tuple[str, ...] = DEFAULT_GROUPS

    @classmethod
    def parse(cls, args: Mapping[str, Sequence[str]]) -> UsageQuery:
        """From a query string's parameters; a bad one is a :class:`BadRequest` naming it."""
        unknown = sorted(set(args) - set(_FILTERS))
        if unknown:
            raise BadRequest(f"unknown parameter '{unknown[0]}' (known: {', '.join(_FILTERS)})")

        def one(name: str) -> str | None:
            values = args.get(name) or []
            return values[-1].strip() if values else None

        group_by = DEFAULT_GROUPS
        raw_groups = one("group_by")
        if raw_groups is not None:
            group_by = tuple(dict.fromkeys(g.strip() for g in raw_groups.split(",") if g.strip()))
            bad = [g for g in group_by if g not in GROUPS]
            if bad:
                raise BadRequest(f"group_by: unknown column '{bad[0]}' (known: {', '.join(GROUPS)})")
        since, until = _instant(one("since"), "since"), _instant(one("until"), "until")
        if since is not None and until is not None and until <= since:
            raise BadRequest("'until' must be after 'since'")
        return cls(since, until, one("token") or None, one("model") or None, group_by)

    def restricted_to(self, token: str) -> UsageQuery:
        """This query limited to ``token``'s own rows (what a client token may see)."""
        return UsageQuery(self.since, self.until, token, self.model, self.group_by)

    def sql(self, dialect: Dialect) -> tuple[str, tuple[Any, ...]]:
        """The statement and its parameters (columns come from :data:`GROUPS` only)."""
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("ts >= ?", self.since),
            ("ts < ?", self.until),
            ("token = ?", self.token),
            ("model = ?", self.model),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        columns = ", ".join(self.group_by)
        text = (
            f"SELECT {columns + ', ' if columns else ''}"
            "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost),"
            " SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END), SUM(duration), MIN(ts), MAX(ts)"
            " FROM usage"
            + (" WHERE " + " AND ".join(where) if where else "")
            + (f" GROUP BY {columns} ORDER BY {columns}" if columns else "")
        )
        return dialect.sql(text), tuple(params)

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """The JSON objects for the rows :meth:`sql` fetched."""
        out = []
        width = len(self.group_by)
        for row in fetched:
            requests = int(row[width])
            if not requests:
                continue  # an aggregate over no rows at all
            keys = dict(zip(self.group_by, row[:width], strict=True))
            prompt, completion, cost, unpriced, failed, duration, first, last = row[width + 1 :]
            out.append(
                keys
                | {
                    "requests": requests,
                    "prompt_tokens": int(prompt or 0),
                    "completion_tokens": int(completion or 0),
                    # Requests without a known price add nothing here; unpriced says how many.
                    "cost": None if cost is None else round(float(cost), 10),
                    "unpriced_requests": int(unpriced or 0),
                    "failed_requests": int(failed or 0),
                    "duration_seconds": round(float(duration or 0.0), 3),
                    "first": _iso(first),
                    "last": _iso(last),
                }
            )
        return out

    def describe(self) -> dict[str, Any]:
        """The filters as the response echoes them."""
        return {
            "since": None if self.since is None else _iso(self.since),
            "until": None if self.until is None else _iso(self.until),
            "token": self.token,
            "model": self.model,
            "group_by": list(self.group_by),
        }


def _instant(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    match = _TIME.fullmatch(value)
    if match is None:
        raise BadRequest(f"'{name}' must be a date (2026-11-30), a UTC time (2026-11-30T12:00:00Z) or epoch seconds")
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups()[:6])
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except (ValueError, OverflowError):
        raise BadRequest(f"'{name}': {value!r} is not a valid time") from None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))
